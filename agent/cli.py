"""`ctl agent run`: the on-box daemon's command line, a thin layer over agent.daemon.loop.

Runs in the foreground; the controller daemonises it (setsid / systemd). Imports stay light
(click here; boto3, watchdog and psutil inside the command) so the agent starts fast on the box.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from agent.protocol.options import store_options

PRICE_BASES = ("on-demand", "spot")

class _RedactingFormatter(logging.Formatter):
    def format(self, record):
        from agent.protocol.redact import redact

        return redact(super().format(record))


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s trainctl-agent %(levelname)s %(message)s"))
    logger = logging.getLogger("trainctl.agent")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _seconds(name: str, default: float, env: str, help_: str):
    return click.option(f"--{name}", type=click.FloatRange(min=0.001), default=default, show_default=True,
                        envvar=env, help=f"{help_} (env {env}).")


@click.group("agent")
def agent_group():
    """The on-box agent that wraps a trainer and streams it to the run store."""


@agent_group.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--run-id", required=True, envvar="TRAINCTL_RUN_ID", help="Run id, e.g. mistral-20250804-171621.")
@store_options
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None, envvar="TRAINCTL_WORKDIR",
              help="The run's folder on the box (default $TRAINCTL_WORKDIR_ROOT/<run-id>, root /mnt/training/runs).")
@_seconds("heartbeat-s", 30.0, "TRAINCTL_HEARTBEAT_S", "Seconds between heartbeats")
@_seconds("log-flush-s", 2.0, "TRAINCTL_LOG_FLUSH_S", "Seconds between log chunk uploads")
@_seconds("stop-poll-s", 10.0, "TRAINCTL_STOP_POLL_S", "Seconds between checks for control/stop")
@_seconds("latest-s", 10.0, "TRAINCTL_LATEST_S", "Minimum seconds between rewrites of the latest-log file")
@_seconds("progress-s", 5.0, "TRAINCTL_PROGRESS_S", "Minimum seconds between progress.json updates")
@_seconds("history-s", 60.0, "TRAINCTL_HISTORY_S",
          "Minimum seconds between history.json (loss curve) rewrites; written again at the end")
@_seconds("stop-grace-s", 30.0, "TRAINCTL_STOP_GRACE_S", "Seconds from SIGINT to SIGTERM, and again to SIGKILL")
@_seconds("retry-max-s", 30.0, "TRAINCTL_RETRY_MAX_S", "Longest backoff between store attempts in an outage")
@_seconds("finalize-timeout-s", 3600.0, "TRAINCTL_FINALIZE_TIMEOUT_S",
          "How long to keep trying to deliver the final log and marker")
@_seconds("shutdown-timeout-s", 60.0, "TRAINCTL_SHUTDOWN_TIMEOUT_S",
          "After SIGTERM to the agent, how long to keep trying to deliver the end of the run")
@_seconds("partial-line-s", 10.0, "TRAINCTL_PARTIAL_LINE_S", "Seconds an unterminated line waits before shipping")
@_seconds("tick-s", 0.25, "TRAINCTL_AGENT_TICK_S", "Main loop poll interval")
@click.option("--nice", type=click.IntRange(0, 19), default=10, show_default=True, envvar="TRAINCTL_AGENT_NICE",
              help="Nice increment the agent takes after starting the trainer (env TRAINCTL_AGENT_NICE).")
@click.option("--imds-endpoint", default="auto", show_default=True, envvar="TRAINCTL_IMDS_ENDPOINT",
              help="Instance metadata service polled for spot interruption notices: auto (169.254.169.254 when "
                   "on EC2), off, or a URL (env TRAINCTL_IMDS_ENDPOINT).")
@_seconds("imds-poll-s", 5.0, "TRAINCTL_IMDS_POLL_S", "Seconds between spot interruption checks")
@_seconds("spot-checkpoint-s", 90.0, "TRAINCTL_SPOT_CHECKPOINT_S",
          "After a spot notice, how long the trainer may take to checkpoint and exit before SIGKILL")
@click.option("--hourly-usd", type=click.FloatRange(min=0), default=None, envvar="TRAINCTL_HOURLY_USD",
              help="The box's price in USD per hour (ctl launch passes it): _complete and _error carry the run's "
                   "cost (env TRAINCTL_HOURLY_USD).")
@click.option("--price-basis", type=click.Choice(PRICE_BASES), default=None, envvar="TRAINCTL_PRICE_BASIS",
              help="Which price --hourly-usd is: the on-demand price, or the spot price the box ran at "
                   "(default on-demand; env TRAINCTL_PRICE_BASIS).")
@click.option("--max-runtime", default=None, envvar="TRAINCTL_MAX_RUNTIME",
              help="Runtime cap (30s, 90m, 12h): at it the trainer is stopped gracefully (checkpoint first) and the "
                   "run fails with cause runtime_cap (env TRAINCTL_MAX_RUNTIME).")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None, envvar="TRAINCTL_MAX_COST",
              help="Spend cap in USD at --hourly-usd: at it the trainer is stopped gracefully and the run fails with "
                   "cause cost_cap; needs --hourly-usd (env TRAINCTL_MAX_COST).")
@click.option("--oom-retries", type=click.IntRange(0, 10), default=0, show_default=True, envvar="TRAINCTL_OOM_RETRIES",
              help="After cause cuda_oom, restart the trainer this many times at half the micro-batch and twice the "
                   "accumulation (TRAINCTL_MICRO_BATCH / TRAINCTL_GRAD_ACCUM in its environment), from its newest "
                   "checkpoint (env TRAINCTL_OOM_RETRIES).")
@click.option("--micro-batch", type=click.IntRange(min=1), default=None,
              help="The trainer's micro-batch, for --oom-retries when it does not report it in its progress file.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=None,
              help="The trainer's gradient accumulation, for --oom-retries (as --micro-batch).")
@click.option("--resume-arg", "resume_args", multiple=True, metavar="ARG",
              help="Appended to the trainer's command on an OOM restart: its resume flag (repeatable), e.g. "
                   "--resume-arg --resume_from_checkpoint --resume-arg latest.")
@click.option("--progress-regex", default=None, envvar="TRAINCTL_PROGRESS_REGEX",
              help="Read progress from output lines matching this regex, with named groups step, total, loss, lr "
                   "(e.g. 'it (?P<step>\\d+)/(?P<total>\\d+) loss (?P<loss>[\\d.]+)'); HF/TRL/axolotl log dicts "
                   "and tqdm bars are read without it (env TRAINCTL_PROGRESS_REGEX).")
@click.option("--read-output/--no-read-output", default=True, show_default=True,
              help="Read progress from the trainer's output when its progress file has none.")
@click.option("--artifact", "artifacts", multiple=True, metavar="PATH",
              help="A final output of the trainer (relative to its output dir TRAINCTL_OUTPUT_DIR, or absolute); "
                   "uploaded and verified before _complete, and the run fails if it is missing. Repeatable.")
@click.option("--checkpoints", default=None, metavar="DIR",
              help="The folder the trainer saves HF-style checkpoint-N folders in (relative to its output dir, "
                   "or absolute): each is uploaded to artifacts/checkpoint-N/ once complete, for --resume.")
@_seconds("checkpoint-settle-s", 30.0, "TRAINCTL_CHECKPOINT_SETTLE_S",
          "A checkpoint folder without trainer_state.json counts as complete once unchanged this long")
@click.option("--ram-total-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              envvar="TRAINCTL_RAM_TOTAL_GB",
              help="The RAM (GiB) this run may use when less than the box has (a container limit, a shared "
                   "box): samples.json and the memory warning then measure the agent and trainer RSS against "
                   "it instead of the whole host (env TRAINCTL_RAM_TOTAL_GB).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging to stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_cmd(run_id, store_url, endpoint_url, store_region, workdir, heartbeat_s, log_flush_s, stop_poll_s, latest_s,
            progress_s, history_s, stop_grace_s, retry_max_s, finalize_timeout_s, shutdown_timeout_s, partial_line_s,
            tick_s, nice, imds_endpoint, imds_poll_s, spot_checkpoint_s, hourly_usd, price_basis, max_runtime, max_cost,
            oom_retries, micro_batch, grad_accum, resume_args, progress_regex, read_output,
            artifacts, checkpoints, checkpoint_settle_s, ram_total_gb, verbose, command):
    """Run COMMAND as the trainer of RUN_ID and keep the store up to date until it ends.

    Example: ctl agent run --run-id mistral-20250804-171621 --store s3://bucket/training-runs
    -- python -m train.qlora --config run.toml
    """
    from agent.daemon.loop import Agent
    from agent.daemon.settings import AgentSettings
    from agent.daemon.workdir import Workdir, default_workdir
    from agent.protocol.runid import validate_run_id

    if not store_url:  # the agent never falls back to the laptop's default store
        raise click.UsageError("Missing option '--store' (or env TRAINCTL_STORE): the run store, e.g. "
                               "s3://bucket/training-runs")
    validate_run_id(run_id)
    _check_regex(progress_regex)
    max_runtime_s = _check_caps(max_runtime, max_cost, hourly_usd)
    from agent.protocol.redact import remember_env

    remember_env(os.environ)  # the trainer inherits these: whatever it prints of them ships masked
    _setup_logging(verbose)
    settings = AgentSettings(heartbeat_s=heartbeat_s, log_flush_s=log_flush_s, stop_poll_s=stop_poll_s,
                             latest_s=latest_s, progress_s=progress_s, history_s=history_s, stop_grace_s=stop_grace_s,
                             kill_grace_s=stop_grace_s, retry_max_s=retry_max_s,
                             finalize_timeout_s=finalize_timeout_s, shutdown_timeout_s=shutdown_timeout_s,
                             partial_line_s=partial_line_s, tick_s=tick_s, nice=nice, imds_endpoint=imds_endpoint,
                             imds_poll_s=imds_poll_s, spot_checkpoint_s=spot_checkpoint_s, hourly_usd=hourly_usd,
                             price_basis=price_basis if hourly_usd is not None else None,
                             max_runtime_s=max_runtime_s, max_cost_usd=max_cost,
                             oom_retries=oom_retries, micro_batch=micro_batch, grad_accum=grad_accum,
                             resume_args=tuple(resume_args),
                             progress_regex=progress_regex or None, read_output=read_output,
                             artifacts=tuple(artifacts), checkpoints=checkpoints or None,
                             checkpoint_settle_s=checkpoint_settle_s,
                             ram_total_bytes=int(ram_total_gb * 2 ** 30) if ram_total_gb else None)
    from agent.protocol.reqstats import RequestStats

    stats = RequestStats()
    store = _open_store(store_url, endpoint_url, store_region, settings, stats)
    wd = Workdir((workdir or default_workdir(run_id)).expanduser().resolve())
    code = Agent(run_id, store, wd, list(command), settings, stats).run()
    sys.exit(code)


def _check_caps(max_runtime: str | None, max_cost: float | None, hourly_usd: float | None) -> float | None:
    """The runtime cap in seconds; a bad cap, or a cost cap with no price to count it in, is one line, exit 2."""
    from agent.protocol.durations import parse_duration
    from agent.protocol.errors import ConfigError

    if max_cost is not None and hourly_usd is None:
        raise click.UsageError("--max-cost needs --hourly-usd (ctl launch passes the box's price): without a "
                               "price there is no cost to cap")
    if not max_runtime:
        return None
    try:
        seconds = parse_duration(max_runtime, what="--max-runtime")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not seconds:
        raise click.UsageError("--max-runtime must be above 0")
    return seconds


def _check_regex(pattern: str | None) -> None:
    """A bad --progress-regex is one line and exit 2, before anything starts."""
    if not pattern:
        return
    from agent.daemon.outputparse import compile_progress_regex

    try:
        compile_progress_regex(pattern)
    except ValueError as exc:
        click.echo(f"Error: --progress-regex: {exc}", err=True)
        sys.exit(2)


def _open_store(url: str, endpoint_url: str | None, region: str | None, settings, stats):
    """The store, with short S3 timeouts: the agent's own backoff rides out long outages."""
    from urllib.parse import urlparse

    from agent.protocol.stores import open_store

    parsed = urlparse(url)
    if parsed.scheme == "s3" and parsed.netloc:
        from agent.protocol.store_s3 import S3Store

        store = S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url, region=region,
                        max_attempts=3, timeout=settings.store_timeout_s)
        stats.attach(store.client)
        return store
    return open_store(url, endpoint_url=endpoint_url, region=region)
