"""Triage from Slack (issue 14 item 3): the alert's "Snooze 4h" and "Stop run" buttons.

Slack POSTs a click (form field `payload`, JSON) signed with the app's signing secret. Each click
is checked with slack_sdk's SignatureVerifier (HMAC of `v0:<ts>:<body>`, timestamp within 5
minutes), then refused if it was seen before (an exact replay) or names no run in the store.
Only then does it act: the snooze goes to the run's ledger (as `ctl ack`, timed from the click,
so a replay could not move it), the stop to `control/stop` (as `ctl stop`; create-only). The
message is updated through the click's response_url to say who did what and when. Nothing here
logs the secret, the signature or the response_url (itself a credential for that message).
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qs

from agent.protocol.errors import ConfigError, NotFound
from agent.protocol.records import iso
from agent.protocol.runid import RUN_ID_RE
from agent.protocol.runstore import RunStore

SNOOZE, STOP = "trainctl_snooze", "trainctl_stop"
SNOOZE_S = 4 * 3600
REPLAY_WINDOW_S = 5 * 60  # SignatureVerifier refuses older timestamps; remember signatures this long


def with_buttons(blocks: list[dict], run_id: str) -> list[dict]:
    """The alert's blocks with Snooze 4h and Stop run added to its actions (the S3 logs button's row)."""
    buttons = [{"type": "button", "action_id": SNOOZE, "value": run_id, "text": {"type": "plain_text",
                                                                                 "text": "🔕 Snooze 4h"}},
               {"type": "button", "action_id": STOP, "value": run_id, "style": "danger",
                "text": {"type": "plain_text", "text": "🛑 Stop run"},
                "confirm": {"title": {"type": "plain_text", "text": "Stop this run?"},
                            "text": {"type": "plain_text", "text": f"The agent stops {run_id}'s trainer gracefully."},
                            "confirm": {"type": "plain_text", "text": "Stop it"},
                            "deny": {"type": "plain_text", "text": "Cancel"}}}]
    out = [dict(b) for b in blocks]
    row = next((b for b in out if b.get("type") == "actions"), None)
    if row is not None:
        row["elements"] = list(row.get("elements", [])) + buttons
    else:
        at = len(out) - 1 if out and out[-1].get("type") == "context" else len(out)
        out.insert(at, {"type": "actions", "elements": buttons})
    return out


class Interactions:
    """Verifies and applies button clicks for one store. `handle` returns (HTTP status, reply text)."""

    def __init__(self, rs: RunStore, signing_secret: str, post=None):
        from slack_sdk.signature import SignatureVerifier

        if not signing_secret:
            raise ConfigError("no Slack signing secret: set SLACK_SIGNING_SECRET (Slack: Basic Information > "
                              "App Credentials) or SLACK_SIGNING_SECRET_SSM_PARAMETER")
        self.rs, self.verifier = rs, SignatureVerifier(signing_secret)
        self.post = post or _post_response
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def handle(self, body: bytes, headers: dict) -> tuple[int, str]:
        """One request from Slack: 401 forged/stale/replayed, 400 unreadable, 404 unknown run, else 200."""
        h = {k.lower(): v for k, v in (headers or {}).items()}
        if not self.verifier.is_valid_request(body, h):
            return 401, "invalid or stale signature"
        if not self._first_time(h["x-slack-signature"], float(h["x-slack-request-timestamp"])):
            return 401, "replayed request"
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            action_id, run_id = action["action_id"], action["value"]
        except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
            return 400, "not a block_actions payload"
        if action_id not in (SNOOZE, STOP) or not RUN_ID_RE.fullmatch(str(run_id)):
            return 400, "unknown action"
        try:
            self.rs.require_run(run_id)
        except NotFound:
            return 404, f"no run {run_id} in this store"
        user = _user(payload)
        at = float(h["x-slack-request-timestamp"])
        note = self._apply(action_id, run_id, user, at)
        self._tell(payload, note)
        return 200, note

    def _first_time(self, signature: str, ts: float) -> bool:
        now = time.time()
        with self._lock:
            self._seen = {s: t for s, t in self._seen.items() if now - t <= REPLAY_WINDOW_S}
            if signature in self._seen:
                return False
            self._seen[signature] = ts
            return True

    def _apply(self, action_id: str, run_id: str, user: str, at: float) -> str:
        from ops.alerts.ledger import snooze_run

        when = iso(at)
        if action_id == SNOOZE:
            until = snooze_run(self.rs, run_id, SNOOZE_S, f"slack:{user}", at)
            return f"🔕 {user} snoozed {run_id} at {when} until {iso(until)}"
        fresh = self.rs.request_stop(run_id, requested_by=f"slack:{user}", reason="stopped from Slack")
        return f"🛑 {user} asked {run_id} to stop at {when}" + ("" if fresh else " (a stop was already requested)")

    def _tell(self, payload: dict, note: str) -> None:
        """Add who-did-what to the message itself (its response_url keeps it for 30 minutes)."""
        url = payload.get("response_url")
        if not url:
            return
        blocks = [b for b in (payload.get("message") or {}).get("blocks", [])]
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
        text = (payload.get("message") or {}).get("text") or note
        try:
            self.post(url, {"replace_original": True, "text": text, "blocks": blocks})
        except Exception as exc:  # noqa: BLE001 - the action is done; only the message edit failed
            print(f"could not update the Slack message: {type(exc).__name__}")  # no URL: it is a credential


def _user(payload: dict) -> str:
    u = payload.get("user") or {}
    return str(u.get("username") or u.get("name") or u.get("id") or "someone")


def _post_response(url: str, body: dict) -> None:
    from slack_sdk.webhook import WebhookClient

    from ops.alerts.slack import check_webhook_url

    check_webhook_url(url)  # https:// (loopback http only): never post a click's answer anywhere else
    WebhookClient(url, timeout=10).send_dict(body)


def serve(inter: Interactions, host: str = "127.0.0.1", port: int = 3000, ready=None) -> None:
    """`ctl slack serve`: answer Slack's interactivity requests (POST, any path) until interrupted."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # the default logs request lines only: no bodies, no headers
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, text = inter.handle(body, dict(self.headers))
            print(f"{status} {text}", flush=True)
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer((host, port), Handler)
    if ready:
        ready(server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()


def lambda_handler(event, context):
    """The Lambda function URL's entry: the same checks and actions as `ctl slack serve`."""
    import base64
    import os

    from agent.protocol.stores import open_store
    from ops.secrets import secret_from_ssm

    env = os.environ
    secret = env.get("SLACK_SIGNING_SECRET")
    if not secret and env.get("SLACK_SIGNING_SECRET_SSM_PARAMETER"):
        secret = secret_from_ssm(env["SLACK_SIGNING_SECRET_SSM_PARAMETER"], env.get("TRAINCTL_SSM_ENDPOINT"),
                                 what="Slack signing secret")
    rs = RunStore(open_store(env.get("TRAINCTL_STORE"), endpoint_url=env.get("TRAINCTL_S3_ENDPOINT")))
    body = (event or {}).get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    status, text = Interactions(rs, secret if secret != "unset" else "").handle(raw, event.get("headers") or {})
    print(f"{status} {text}")
    return {"statusCode": status, "headers": {"Content-Type": "text/plain"}, "body": text}
