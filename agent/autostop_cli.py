"""`ctl autostop`: the idle-shutdown companion that runs on the box beside the agents."""

from __future__ import annotations

import click

from agent.daemon.autostop import AutostopDaemon
from agent.protocol.durations import parse_duration


@click.command("autostop")
@click.option("--runs-root", default="/mnt/training/runs", show_default=True, envvar="TRAINCTL_RUNS_ROOT",
              help="Folder holding one workdir per run (agent.pid marks a live agent).")
@click.option("--after", "after", default="15m", show_default=True, envvar="TRAINCTL_AUTOSTOP",
              help="Stop after this long with no active run and no interactive SSH session; 'never' disables.")
@click.option("--check-s", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds between checks.")
@click.option("--action", default=None, envvar="TRAINCTL_AUTOSTOP_ACTION",
              help="Command run when idle (default: shutdown -h now, with sudo when not root).")
def autostop_cmd(runs_root, after, check_s, action):
    """Stop this box when it has been idle for the autostop period (stop, not terminate)."""
    idle_s = parse_duration(after, what="--after", allow_never=True)
    raise SystemExit(AutostopDaemon(runs_root, idle_s, check_s, action).run())
