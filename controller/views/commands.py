"""Click commands that read a run from the store: tail, status, report, stop, runs (thin layers over
controller.views)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from agent.protocol.errors import ConfigError
from agent.protocol.options import open_run_store, store_options
from controller.views.facts import ec2_enricher

_at = click.option("--at", "at", type=float, default=None, hidden=True,
                   help="Judge the run as of this Unix time instead of now (tests, post-mortems).")
_no_instance = click.option("--no-instance", is_flag=True, help="Do not ask EC2 about the run's instance.")


@click.command("tail")
@click.argument("run_id")
@store_options
@click.option("--lines", "-n", type=click.IntRange(min=0), default=20, show_default=True, help="Lines of history.")
@click.option("--from-start", is_flag=True, help="Print the whole log from the first chunk.")
@click.option("--no-follow", is_flag=True, help="Print what is there and exit (the run's state goes to stderr).")
@click.option("--poll-s", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds between looks at the store.")
@click.option("--stale-after-s", type=click.FloatRange(min=0.1), default=None,
              help="Silence after a missed heartbeat that counts as stale: overrides the watcher's grace "
                   "(TRAINCTL_HEARTBEAT_GRACE, default 60s).")
@_no_instance
@_at
def tail_cmd(run_id, store_url, endpoint_url, store_region, lines, from_start, no_follow, poll_s, stale_after_s,
             no_instance, at):
    """Follow a run's log until the watcher's state ends it.

    Exit codes: 0 completed; 1 failed, stopped_by_user, interrupted or corrupt; 3 stale: agent_silent,
    hung or instance_gone; 130 on Ctrl-C (the run goes on). The states, reasons and timeouts are the
    watcher's (`ctl watch`; TRAINCTL_HEARTBEAT_GRACE and friends as the Lambda reads them).
    """
    from agent.protocol.runid import validate_run_id
    from controller.views.tail import Tail, last_lines_cursor

    validate_run_id(run_id)
    rs = open_run_store(store_url, endpoint_url, store_region)
    rs.require_run(run_id)
    t = Tail(rs, run_id, poll_s=poll_s, stale_after_s=stale_after_s, show_status=sys.stdout.isatty(),
             ec2=ec2_enricher(no_instance))
    if at is not None:
        t.clock = lambda: at
    try:
        if not from_start:
            data, t.cursor = last_lines_cursor(rs, run_id, lines)
            t.show(data)  # through the tail's frame folding, so a line split at the cursor folds whole
        code = t.run(follow=not no_follow)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following {run_id}; the run goes on (`ctl tail {run_id}` to follow again, "
                   f"`ctl stop {run_id}` to stop it)", err=True)
        sys.exit(130)
    sys.exit(code)


@click.command("status")
@click.argument("run_id")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_no_instance
@_at
def status_cmd(run_id, store_url, endpoint_url, store_region, as_json, no_instance, at):
    """One screen about a run: the watcher's state and reason, phase, progress, heartbeat, instance state."""
    from agent.protocol.runid import validate_run_id
    from controller.views.facts import view_settings
    from controller.views.status import collect, render

    validate_run_id(run_id)
    rs = open_run_store(store_url, endpoint_url, store_region)
    now = time.time() if at is None else at
    d = collect(rs, run_id, now, ec2_enricher(no_instance), view_settings())
    click.echo(json.dumps(d, indent=2, default=str) if as_json else render(d, now))


@click.command("report")
@click.argument("run_id")
@store_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the HTML (default <run-id>-report.html here).")
@click.option("--png", "png", is_flag=True, help="Also write each plot as a PNG beside the HTML.")
@_no_instance
@_at
def report_cmd(run_id, store_url, endpoint_url, store_region, out_path, png, no_instance, at):
    """One self-contained HTML page about a run: outcome, cause, cost, config, timings and plots."""
    from agent.protocol import plots
    from agent.protocol.runid import validate_run_id
    from controller.views.facts import view_settings
    from controller.views.report import build, to_html
    from controller.views.status import collect

    validate_run_id(run_id)
    if png and not plots.available():
        raise ConfigError("--png needs matplotlib: pip install 'trainctl[plots]'")
    rs = open_run_store(store_url, endpoint_url, store_region)
    rep = build(rs, run_id, collect(rs, run_id, time.time() if at is None else at, ec2_enricher(no_instance), view_settings()))
    out = out_path or Path(f"{run_id}-report.html")
    out.write_text(to_html(rep), encoding="utf-8")
    click.echo(f"wrote {out}")
    for title, data in rep.pngs.items() if png else ():
        dest = out.with_name(f"{out.stem}-{title.replace(' ', '_')}.png")
        dest.write_bytes(data)
        click.echo(f"wrote {dest}")


@click.command("stop")
@click.argument("run_id")
@store_options
@click.option("--wait", is_flag=True, help="Wait until the agent has stopped the trainer.")
@click.option("--timeout-s", type=click.FloatRange(min=0.1), default=600, show_default=True,
              help="With --wait: give up (exit 3) after this many seconds.")
@click.option("--poll-s", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="With --wait: seconds between looks at the store.")
@click.option("--reason", default="stopped by user", show_default=True, help="Recorded in control/stop.")
def stop_cmd(run_id, store_url, endpoint_url, store_region, wait, timeout_s, poll_s, reason):
    """Ask the agent to stop the trainer gracefully (writes control/stop)."""
    from agent.protocol.runid import validate_run_id
    from controller.views.status import request_stop, wait_for_marker

    validate_run_id(run_id)
    rs = open_run_store(store_url, endpoint_url, store_region)
    result = request_stop(rs, run_id, reason)
    if result == "finished":
        click.echo(f"run {run_id} already finished; nothing to stop")
        return
    click.echo(f"stop {'requested' if result == 'requested' else 'was already requested'} for {run_id}")
    if wait:
        got = wait_for_marker(rs, run_id, timeout_s, poll_s)
        if got is None:
            click.echo(f"the agent has not stopped {run_id} within {timeout_s:g}s: `ctl status {run_id}` "
                       f"shows whether it is still alive", err=True)
            sys.exit(3)
        click.echo(f"run {run_id} stopped ({'_complete' if got == 'complete' else '_error'} written)")


@click.command("runs")
@store_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest runs to show.")
@click.option("--no-instance", is_flag=True, help="Do not ask EC2 about the instances of unfinished runs.")
@_at
def runs_cmd(store_url, endpoint_url, store_region, as_json, limit, no_instance, at):
    """List runs in the store: id, the watcher's state, phase, step, heartbeat age, cost."""
    from agent.protocol.durations import fmt_duration
    from agent.protocol.records import fmt_metric
    from controller.views.facts import view_settings
    from controller.views.runs import list_rows, rows_as_dicts
    from ops.pricing import fmt_cost

    rs = open_run_store(store_url, endpoint_url, store_region)
    rows = list_rows(rs, time.time() if at is None else at, limit, view_settings(), ec2_enricher(no_instance))
    if as_json:
        click.echo(json.dumps(rows_as_dicts(rows), indent=2))
        return
    if not rows:
        click.echo(f"no runs in {rs.url}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {rs.url}")
    for col in ("run id", "state", "phase", "step", "loss", "heartbeat", "cost"):
        table.add_column(col, justify="right" if col == "cost" else "left")
    for r in rows:
        step = "-" if r.step is None else (f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step))
        loss = "-" if r.loss is None else fmt_metric(r.loss)
        table.add_row(r.run_id, r.state, r.phase or "-", step, loss, fmt_duration(r.heartbeat_age_s),
                      fmt_cost(r.cost_usd))
    Console(file=sys.stdout, width=120).print(table)


COMMANDS = [tail_cmd, status_cmd, report_cmd, stop_cmd, runs_cmd]
