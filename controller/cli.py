"""The `ctl` entry point: a thin click layer. Domain errors become one clean line here, only here.

Heavy parts (torch, transformers, datasets) are imported inside the commands that need them, so
`ctl --help` and the agent start fast on a laptop without the train extra.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version

import click

from agent.errors import TrainctlError

try:
    __version__ = version("trainctl")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"


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


_STORE_OPTIONS = (
    click.option("--store", "store_url", envvar="TRAINCTL_STORE", default=None, metavar="URL",
                 help="Run store: s3://bucket/prefix, file:///path or a folder (env TRAINCTL_STORE; "
                      "default ~/.trainctl/runs)."),
    click.option("--endpoint-url", envvar="TRAINCTL_S3_ENDPOINT", default=None, metavar="URL",
                 help="S3 endpoint for S3-compatible stores (env TRAINCTL_S3_ENDPOINT)."),
    click.option("--store-region", "store_region", envvar="TRAINCTL_S3_REGION", default=None, metavar="REGION",
                 help="Region of the store's bucket (env TRAINCTL_S3_REGION; default: the AWS settings')."),
)


def store_options(fn):
    """--store, --endpoint-url and --store-region: where a command finds the run store (declared once)."""
    for option in reversed(_STORE_OPTIONS):
        fn = option(fn)
    return fn


def open_run_store(store_url: str | None, endpoint_url: str | None = None, region: str | None = None):
    """The RunStore a command's store options name."""
    from agent.runstore import RunStore
    from agent.store import open_store

    return RunStore(open_store(store_url, endpoint_url=endpoint_url, region=region))


@click.group(cls=TrainctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ctl")
def main():
    """trainctl: run QLoRA fine-tuning unattended and hear about it on Slack when it goes wrong."""


@main.command("runs")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest runs to show.")
def runs_cmd(store_url, endpoint_url, store_region, as_json, limit):
    """List runs in the store: id, phase, step, heartbeat age, outcome, cost."""
    from agent.pricing import fmt_cost
    from agent.protocol import fmt_metric
    from controller.runs import fmt_age, list_rows, rows_as_dicts

    rs = open_run_store(store_url, endpoint_url, store_region)
    rows = list_rows(rs, time.time(), limit)
    if as_json:
        click.echo(json.dumps(rows_as_dicts(rows), indent=2))
        return
    if not rows:
        click.echo(f"no runs in {rs.url}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {rs.url}")
    for col in ("run id", "phase", "step", "loss", "heartbeat", "outcome", "cost"):
        table.add_column(col, justify="right" if col == "cost" else "left")
    for r in rows:
        step = "-" if r.step is None else (f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step))
        loss = "-" if r.loss is None else fmt_metric(r.loss)
        table.add_row(r.run_id, r.phase or "-", step, loss, fmt_age(r.heartbeat_age_s), r.outcome, fmt_cost(r.cost_usd))
    Console(file=sys.stdout, width=120).print(table)


# Each part contributes its own click commands below, so `ctl --help` shows them all.
from ops.cli import ack_cmd, watch_cmd  # noqa: E402

main.add_command(watch_cmd)
main.add_command(ack_cmd)

from agent.cli import agent_group  # noqa: E402

main.add_command(agent_group)

from controller.commands import COMMANDS as _CONTROLLER_COMMANDS  # noqa: E402

for _cmd in _CONTROLLER_COMMANDS:
    main.add_command(_cmd)

from train.cli import train_group  # noqa: E402

main.add_command(train_group)

from agent.autostop_cli import autostop_cmd  # noqa: E402

main.add_command(autostop_cmd)

from infra.cli import COMMANDS as _INFRA_COMMANDS  # noqa: E402

for _cmd in _INFRA_COMMANDS:
    main.add_command(_cmd)
