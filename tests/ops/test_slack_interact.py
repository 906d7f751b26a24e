"""Triage buttons (issue 14 item 3): `ctl slack serve` (a real process) takes clicks signed exactly as
Slack signs them; Snooze 4h acks in the ledger, Stop run writes control/stop; forged, stale,
replayed and unknown-run clicks are refused and change nothing; no secret is printed."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.interact import SNOOZE, STOP
from ops.sweep import Watcher
from tests.fixtures.slack import signed_click
from tests.ops.test_cli import CTL
from tests.ops.test_fakes import make_run

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def served(local_store):
    """`ctl slack serve` on a free port over `local_store`; yields (base URL, its output lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env["SLACK_SIGNING_SECRET"] = SECRET
    proc = subprocess.Popen([CTL, "slack", "serve", "--port", "0", "--store", str(local_store.root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    up = threading.Event()

    def read():
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if line.startswith("listening on "):
                up.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        assert up.wait(60), "".join(lines)
        url = next(x for x in lines if x.startswith("listening on ")).split()[2]
        yield url, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def click(url: str, body: bytes, headers: dict) -> int:
    req = urllib.request.Request(url + "/slack/actions", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def alert_with_buttons(rs, slack, now) -> tuple[str, dict]:
    rid = make_run(rs, now=now, progress_age=2000)  # hung
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), buttons=True)
    w.sweep(now)
    [post] = slack.posts
    return rid, post["body"]


def payload(slack, rid: str, action_id: str, message: dict) -> dict:
    return {"type": "block_actions", "user": {"id": "U123", "username": "alice"},
            "response_url": slack.response_url, "message": message,
            "actions": [{"action_id": action_id, "value": rid, "type": "button"}]}


def test_snooze_click_acks_in_the_ledger_and_says_who(local_store, slack, served):
    url, lines = served
    rs = RunStore(local_store)
    now = time.time()
    rid, message = alert_with_buttons(rs, slack, now)
    [row] = [b for b in message["blocks"] if b["type"] == "actions"]
    assert [e.get("action_id") for e in row["elements"]][-2:] == [SNOOZE, STOP]
    body, headers = signed_click(SECRET, payload(slack, rid, SNOOZE, message), ts=now)
    assert click(url, body, headers) == 200
    led = L.load(rs, rid).ledger
    assert led.snooze_until == pytest.approx(int(now) + 4 * 3600) and led.snoozed_by == "slack:alice"
    [resp] = slack.responses
    assert resp["body"]["replace_original"] is True
    note = resp["body"]["blocks"][-1]["elements"][0]["text"]
    assert note.startswith(f"🔕 alice snoozed {rid} at ") and " until " in note
    assert resp["body"]["blocks"][:-1] == message["blocks"]  # the alert itself is kept
    # No repeat while snoozed: an hour later the sweep sends nothing.
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())))
    assert w.sweep(now + 3700).sent == 0 and len(slack.posts) == 1
    out = "".join(lines)
    assert SECRET not in out and "responsesecret0001" not in out and headers["X-Slack-Signature"] not in out


def test_stop_click_writes_control_stop(local_store, slack, served):
    url, _ = served
    rs = RunStore(local_store)
    now = time.time()
    rid, message = alert_with_buttons(rs, slack, now)
    body, headers = signed_click(SECRET, payload(slack, rid, STOP, message), ts=now)
    assert click(url, body, headers) == 200
    stop = rs.read_stop(rid)
    assert stop is not None and stop.requested_by == "slack:alice"
    assert slack.responses[0]["body"]["blocks"][-1]["elements"][0]["text"].startswith(f"🛑 alice asked {rid} to stop")


def test_forged_stale_replayed_and_unknown_clicks_change_nothing(local_store, slack, served):
    url, _ = served
    rs = RunStore(local_store)
    now = time.time()
    rid, message = alert_with_buttons(rs, slack, now)
    before = local_store.get(f"{rid}/{p.ALERTS}")
    snooze = payload(slack, rid, SNOOZE, message)
    forged = signed_click("not-the-secret", snooze, ts=now)
    stale = signed_click(SECRET, snooze, ts=now - 301)
    tampered_body, tampered_headers = signed_click(SECRET, snooze, ts=now)
    tampered_body = tampered_body.replace(b"alice", b"mallory")
    assert click(url, *forged) == 401
    assert click(url, *stale) == 401
    assert click(url, tampered_body, tampered_headers) == 401
    assert click(url, b"payload=%7B%7D", {"Content-Type": "application/x-www-form-urlencoded"}) == 401
    ghost = signed_click(SECRET, payload(slack, "ghost-20270115-080000", STOP, message), ts=now)
    assert click(url, *ghost) == 404
    assert local_store.get(f"{rid}/{p.ALERTS}") == before and rs.read_stop(rid) is None
    assert not rs.run_exists("ghost-20270115-080000") and slack.responses == []
    good = signed_click(SECRET, payload(slack, rid, STOP, message), ts=now)
    assert click(url, *good) == 200
    first = local_store.get(f"{rid}/{p.STOP}")
    assert click(url, *good) == 401  # the same request again: a replay
    assert local_store.get(f"{rid}/{p.STOP}") == first and len(slack.responses) == 1


def test_function_url_handler_reads_the_secret_from_ssm_and_refuses_forgeries(s3_store, slack, moto_server,
                                                                             monkeypatch):
    """The Lambda behind the stack's function URL: the same checks, the secret from an SSM SecureString."""
    import base64

    from ops.interact import lambda_handler

    rs = RunStore(s3_store)
    now = time.time()
    rid, message = alert_with_buttons(rs, slack, now)
    name = f"/trainctl/test/{rid}/signing-secret"
    moto_server.client("ssm").put_parameter(Name=name, Type="SecureString", Overwrite=True, Value=SECRET)
    for k, v in {"TRAINCTL_STORE": s3_store.url, "TRAINCTL_S3_ENDPOINT": moto_server.endpoint,
                 "SLACK_SIGNING_SECRET_SSM_PARAMETER": name, "TRAINCTL_SSM_ENDPOINT": moto_server.endpoint}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)

    def event(body: bytes, headers: dict) -> dict:  # a function URL event: lower-case headers, base64 body
        return {"headers": {k.lower(): v for k, v in headers.items()}, "isBase64Encoded": True,
                "body": base64.b64encode(body).decode(), "requestContext": {"http": {"method": "POST"}}}

    forged = lambda_handler(event(*signed_click("nope", payload(slack, rid, SNOOZE, message), ts=now)), None)
    assert forged["statusCode"] == 401 and L.load(rs, rid).ledger.snooze_until is None
    ok = lambda_handler(event(*signed_click(SECRET, payload(slack, rid, SNOOZE, message), ts=now)), None)
    assert ok["statusCode"] == 200 and L.load(rs, rid).ledger.snoozed_by == "slack:alice"
    assert SECRET not in repr(ok)


def test_stop_click_reaches_the_agent_which_stops_the_trainer_gracefully(local_store, slack, served, agents,
                                                                        tmp_path):
    from tests.trainers.harness import trainer_cmd, wait_for

    url, _ = served
    rs = RunStore(local_store)
    rid = "stopme-20270115-080000"
    ready = tmp_path / "ready"
    proc = agents.start(rid, str(local_store.root), tmp_path / "wd", trainer_cmd(
        "--lines", "3", "--end", "hang", "--ready-file", str(ready)))
    wait_for(ready.exists, what="trainer ready")
    wait_for(lambda: rs.read_heartbeat(rid), what="first heartbeat")
    message = {"text": "🧊 Training hung", "blocks": []}
    body, headers = signed_click(SECRET, payload(slack, rid, STOP, message), ts=time.time())
    assert click(url, body, headers) == 200
    assert agents.wait(proc, 60) == 0, agents.output(proc)
    err = rs.read_error(rid)
    assert err.cause == "stopped_by_user" and err.signal == "SIGINT"  # the trainer took the first, gentle signal
    assert rs.read_stop(rid).requested_by == "slack:alice"


def test_lambda_with_buttons_on_puts_them_on_the_alert(s3_store, slack, moto_server, monkeypatch):
    from ops.lambda_handler import handler

    rs = RunStore(s3_store)
    now = time.time()
    make_run(rs, now=now, progress_age=2000)
    for k, v in {"TRAINCTL_STORE": s3_store.url, "TRAINCTL_S3_ENDPOINT": moto_server.endpoint,
                 "SLACK_WEBHOOK_URL": slack.webhook_url, "TRAINCTL_EC2": "0", "SLACK_BUTTONS": "1"}.items():
        monkeypatch.setenv(k, v)
    assert handler({"now": now}, None)["sent"] == 1
    [row] = [b for b in slack.posts[0]["body"]["blocks"] if b["type"] == "actions"]
    assert [e.get("action_id") for e in row["elements"]][-2:] == [SNOOZE, STOP]
