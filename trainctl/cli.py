"""The `ctl` root: every part's commands under one group. Domain errors become one clean line
here, only here.

Heavy parts (torch, transformers, datasets) are imported inside the commands that need them, so
`ctl --help` and the agent start fast on a laptop without the train extra.
"""

from __future__ import annotations

import click

from agent.protocol.errors import TrainctlError
from agent.protocol.records import trainctl_version

__version__ = trainctl_version()


class CleanError(click.ClickException):
    """A TrainctlError shown as `Error: <message>` with the error's own exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class TrainctlGroup(click.Group):
    """Turns domain errors raised anywhere below into CleanError: the one place that does."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TrainctlError as exc:
            raise CleanError(str(exc), exc.exit_code) from None
        except Exception as exc:  # an AWS error no part translated: still one line with the fix
            from agent.protocol import awserrors

            if not awserrors.is_botocore(exc):
                raise
            raise CleanError(f"AWS: {awserrors.one_line(exc, fix_resource='check the names in the command')}",
                             1) from None


@click.group(cls=TrainctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctl")
def main():
    """trainctl: run QLoRA fine-tuning unattended and hear about it on Slack when it goes wrong."""


def _add_parts() -> None:
    from agent.autostop_cli import autostop_cmd
    from agent.cli import agent_group
    from controller.commands import COMMANDS as CONTROLLER_COMMANDS
    from infra.cli import COMMANDS as INFRA_COMMANDS
    from ops.cli import ack_cmd, slack_group, watch_cmd
    from train.cli import train_group

    for cmd in (watch_cmd, ack_cmd, slack_group, agent_group, *CONTROLLER_COMMANDS, train_group, autostop_cmd, *INFRA_COMMANDS):
        main.add_command(cmd)


_add_parts()
