"""`ctl watch` and `ctl ack`: thin click commands over ops.sweep and the ledger."""

from __future__ import annotations

import time

import click

from agent.protocol.options import store_options


@click.command("watch")
@store_options
@click.option("--once", is_flag=True, help="Sweep once and exit (for cron); default: sweep forever.")
@click.option("--interval", default="30", show_default=True, metavar="DURATION", help="Time between sweeps.")
@click.option("--slack-webhook", envvar="SLACK_WEBHOOK_URL", default=None, metavar="URL",
              help="Incoming-webhook URL (env SLACK_WEBHOOK_URL). Without Slack, alerts print here.")
@click.option("--slack-token", envvar="SLACK_BOT_TOKEN", default=None, metavar="TOKEN",
              help="Bot token for chat.postMessage (env SLACK_BOT_TOKEN); resolves reply in the alert's thread.")
@click.option("--slack-channel", envvar="SLACK_CHANNEL", default=None, metavar="CHANNEL",
              help="Channel for --slack-token (env SLACK_CHANNEL).")
@click.option("--slack-api-url", envvar="SLACK_API_URL", default=None, hidden=True)
@click.option("--heartbeat", "heartbeat_s", default=None, metavar="DURATION",
              help="Expected heartbeat interval (default: the run's own, 30s).")
@click.option("--heartbeat-grace", default="60s", show_default=True, metavar="DURATION",
              help="Silence tolerated after a missed heartbeat before alerting.")
@click.option("--progress-timeout", default="15m", show_default=True, metavar="DURATION",
              help="No new training step for this long (agent alive) = hung; once a run has shown its pace, "
              "its own deadline (e.g. 5 x its p95 step time), never longer than this.")
@click.option("--log-silence", default="15m", show_default=True, metavar="DURATION",
              help="A run whose output shows no recognisable progress: no new log output for this long = hung.")
@click.option("--setup-timeout", default="60m", show_default=True, metavar="DURATION",
              help="Progress timeout during setup, downloads, data prep and the first step.")
@click.option("--launch-timeout", default="15m", show_default=True, metavar="DURATION",
              help="Time from launch to the first heartbeat.")
@click.option("--orphan-after", default="30m", show_default=True, metavar="DURATION|never",
              help="Alert once when a running instance tagged ManagedBy=trainctl has had no active run this long.")
@click.option("--ec2/--no-ec2", default=True, show_default=True,
              help="Ask EC2 about each run's instance and look for idle tagged instances.")
@click.option("--ec2-endpoint-url", envvar="TRAINCTL_EC2_ENDPOINT", default=None, metavar="URL", hidden=True)
@click.option("--region", default=None, help="Region of instances whose metadata names none.")
@click.option("--events", "events_spec", envvar="TRAINCTL_EVENTS", default="auto", show_default=True,
              metavar="auto|none|sqs://QUEUE",
              help="Sweep a run the moment its _error/_complete appears: auto watches a local store's folder, "
              "or long-polls the saved stack's events_queue when that stack serves this S3 store; "
              "sqs://<queue> long-polls that queue (terraform output events_queue).")
@click.option("--stack", default="default", show_default=True,
              help="The provisioned stack (`ctl provision --stack`) whose saved events_queue --events auto uses.")
@click.option("--slack-buttons/--no-slack-buttons", envvar="SLACK_BUTTONS", default=False, show_default=True,
              help="Put Snooze 4h and Stop run on alerts (needs `ctl slack serve` or the stack's interactivity URL).")
def watch_cmd(store_url, endpoint_url, store_region, once, interval, slack_webhook, slack_token, slack_channel,
              slack_api_url, heartbeat_s, heartbeat_grace, progress_timeout, log_silence, setup_timeout, launch_timeout, orphan_after, ec2,
              ec2_endpoint_url, region, events_spec, stack, slack_buttons):
    """Watch every run in the store and alert on Slack when one fails, hangs, goes silent or finishes."""
    from agent.protocol.durations import parse_duration
    from ops.config import build_watcher, settings_from

    settings = settings_from({"heartbeat_s": heartbeat_s, "grace_s": heartbeat_grace,
                              "progress_timeout_s": progress_timeout, "log_silence_s": log_silence,
                              "setup_progress_timeout_s": setup_timeout,
                              "launch_timeout_s": launch_timeout, "orphan_after_s": orphan_after})
    every = parse_duration(interval, what="--interval")
    if every <= 0:
        from agent.protocol.errors import ConfigError

        raise ConfigError(f"--interval must be positive, got {interval!r}")
    w = build_watcher(store_url, endpoint_url, settings=settings, webhook_url=slack_webhook, token=slack_token,
                      channel=slack_channel, api_url=slack_api_url, ec2=ec2, ec2_endpoint_url=ec2_endpoint_url,
                      region=region, store_region=store_region)
    w.buttons = slack_buttons
    from ops.push import open_events

    events, how = (None, "") if once else open_events(events_spec, w.rs.store, endpoint_url, store_region, stack)
    pushed = f"; {how}" if how else ""
    click.echo(f"watching {w.rs.url} every {every:g}s; alerts to {w.notifier.sink.via}{pushed}", err=True)
    if events:
        events.start()
    try:
        _loop(w, events, every, once)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        if events:
            events.stop()


def _loop(w, events, every: float, once: bool) -> None:
    """Full sweeps every `every` s; in between, pushed markers are swept the moment they arrive."""
    from agent.protocol.errors import StoreError

    while True:
        try:
            rep = w.sweep(time.time())
        except StoreError as exc:
            if once:
                raise
            # A store outage must not end the watcher: say so and try again next interval.
            click.echo(f"warning: sweep failed, retrying in {every:g}s: {exc}", err=True)
            _wait(w, events, every)
            continue
        states = ", ".join(f"{k} {v}" for k, v in sorted(rep.states.items())) or "none active"
        idle = f"; {rep.idle_instances} idle tagged instance(s)" if rep.idle_instances else ""
        click.echo(f"sweep: {rep.runs} runs, {rep.active} active ({states}); sent {rep.sent}, "
                   f"pending {rep.pending}{idle}", err=True)
        for e in rep.errors:
            click.echo(f"warning: {e}", err=True)
        if once:
            _exit_if_undelivered(rep)
            return
        _wait(w, events, every)


def _wait(w, events, every: float) -> None:
    """Until the next full sweep: sleep, or sweep each run a pushed marker names as it comes."""
    from agent.protocol.errors import StoreError

    deadline = time.monotonic() + every
    while (left := deadline - time.monotonic()) > 0:
        if events is None:
            time.sleep(left)
            return
        try:
            ids = events.wait(left)
            if not ids:
                events.done()  # a test event, another prefix's marker: nothing to sweep, drop it
                continue
            rep = w.sweep_runs(ids, time.time())
        except StoreError as exc:
            events.done(swept=False)
            click.echo(f"warning: pushed sweep failed, the next full sweep retries: {exc}", err=True)
            continue
        events.done(swept=not rep.errors)
        click.echo(f"pushed: {', '.join(sorted(ids))}: sent {rep.sent}, pending {rep.pending}", err=True)
        for e in rep.errors:
            click.echo(f"warning: {e}", err=True)


def _exit_if_undelivered(rep) -> None:
    """For cron: an alert that did not reach Slack (pending or refused) is a failed `--once`."""
    if not (rep.pending or rep.failed):
        return
    why = f": {rep.last_send_error}" if rep.last_send_error else " (another watcher holds them, or they wait to retry)"
    click.echo(f"error: {max(rep.pending, rep.failed)} alert(s) not delivered, still pending{why}", err=True)
    raise click.exceptions.Exit(1)


@click.command("ack")
@click.argument("run_id")
@click.option("--for", "duration", default="4h", show_default=True, metavar="DURATION",
              help="How long to mute alerts and repeats for this run (0 lifts a snooze).")
@click.option("--by", default=None, help="Who acknowledged (shown in the ledger); default $USER.")
@store_options
def ack_cmd(run_id, duration, by, store_url, endpoint_url, store_region):
    """Acknowledge a run's alert: mute its alerts and repeats for a while (completion/failure still post)."""
    import os

    from agent.protocol.durations import parse_duration
    from agent.protocol.options import open_run_store
    from agent.protocol.records import iso
    from agent.protocol.runid import validate_run_id
    from ops.alerts.ledger import snooze_run

    validate_run_id(run_id)
    secs = parse_duration(duration, what="--for")
    rs = open_run_store(store_url, endpoint_url, store_region)
    until = snooze_run(rs, run_id, secs, by or os.environ.get("USER", ""), time.time())
    if until is None:
        click.echo(f"{run_id}: snooze lifted; alerts resume on the next sweep")
    else:
        click.echo(f"{run_id}: alerts muted until {iso(until)} (completion, failure and recovery still post)")


@click.group("slack")
def slack_group():
    """Slack's side of the watcher: the endpoint behind the alerts' buttons."""


@slack_group.command("serve")
@store_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (put TLS in front).")
@click.option("--port", default=3000, show_default=True, type=int, help="Port to listen on (0: any free one).")
@click.option("--signing-secret", envvar="SLACK_SIGNING_SECRET", default=None, metavar="SECRET",
              help="The app's signing secret (env SLACK_SIGNING_SECRET; prefer the env over the flag).")
def slack_serve_cmd(store_url, endpoint_url, store_region, host, port, signing_secret):
    """Answer Snooze 4h / Stop run clicks: verify Slack's signature, then ack in the ledger or write control/stop."""
    from agent.protocol.options import open_run_store
    from ops.interact import Interactions, serve

    inter = Interactions(open_run_store(store_url, endpoint_url, store_region), signing_secret or "")
    ready = lambda bound: click.echo(f"listening on http://{host}:{bound} for {inter.rs.url}", err=True)  # noqa: E731
    try:
        serve(inter, host, port, ready=ready)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
