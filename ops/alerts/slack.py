"""Where alerts go: a Slack incoming webhook, Slack's Web API (threads), or the terminal.

Retries are slack_sdk's: RateLimitErrorRetryHandler honours 429 + Retry-After, and
ConnectionErrorRetryHandler rides out resets. We check the reply ourselves (webhooks answer
200 with the body `ok`). A permanent error (404, 410, invalid_token, ...) is reported once on
the console and the remaining alerts of this process print there (once each) instead of being
retried forever; a transient one (5xx, connection refused) leaves the alert pending for the next
sweep. A console print never counts as a Slack delivery: the alert stays pending in the ledger,
so it reaches Slack once the webhook or token is fixed, and `ctl watch --once` exits non-zero.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from ops.alerts.message import Message

PERMANENT_WEBHOOK = {"no_service", "no_team", "team_disabled", "invalid_token", "channel_is_archived",
                     "channel_not_found", "action_prohibited", "posting_to_general_channel_denied",
                     "no_active_hooks", "invalid_payload", "user_not_found"}
PERMANENT_API = {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
                 "invalid_token", "channel_not_found", "is_archived", "not_in_channel", "missing_scope",
                 "no_permission", "team_access_not_granted", "invalid_blocks", "msg_too_long"}


@dataclass
class Delivery:
    """The outcome of one send."""

    delivered: bool
    via: str
    error: str | None = None
    permanent: bool = False
    thread_ts: str | None = None
    channel: str | None = None
    file_id: str | None = None  # an uploaded file's id (ApiSink.upload)


def _retry_handlers(rate_limit_retries: int, connection_retries: int):
    from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

    return [RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
            ConnectionErrorRetryHandler(max_retry_count=connection_retries)]


def _api_refusal(exc) -> tuple[str, bool]:
    """What a SlackApiError says (`HTTP <status> <error code>`) and whether it is permanent: a code
    in PERMANENT_API or a gone endpoint, where retrying next sweep cannot help."""
    status = exc.response.status_code
    code = exc.response.get("error") if isinstance(exc.response.data, dict) else str(exc.response.data)[:100]
    return f"HTTP {status} {code}", code in PERMANENT_API or status in (404, 410)


class ConsoleSink:
    """The embedded default: the same content, printed with rich (plain text where rich is absent,
    e.g. in the Lambda zip, where stdout goes to CloudWatch Logs)."""

    via = "console"

    def __init__(self, file=None):
        self.file = file or sys.stdout
        try:
            from rich.console import Console
        except ImportError:
            self.console = None
        else:
            self.console = Console(file=self.file, width=110, highlight=False)

    def send(self, message: Message, thread_ts: str | None = None, channel: str | None = None) -> Delivery:
        body = "\n".join(message.text.splitlines()[1:])
        if self.console is None:
            print(f"{message.header}\n{body}\n", file=self.file, flush=True)
            return Delivery(True, self.via)
        from rich.markup import escape
        from rich.panel import Panel

        self.console.print(Panel(escape(body), title=escape(message.header), title_align="left"))
        return Delivery(True, self.via)

    def note(self, line: str) -> None:
        """A one-line operational notice (not an alert)."""
        print(line, file=self.file, flush=True)


class WebhookSink:
    """An incoming webhook (slack_sdk.WebhookClient). Webhooks cannot reply in threads."""

    via = "slack-webhook"

    def __init__(self, url: str, timeout: float = 10, rate_limit_retries: int = 3, connection_retries: int = 2):
        from slack_sdk.webhook import WebhookClient

        self._url = url
        self.client = WebhookClient(url, timeout=int(max(1, timeout)),
                                    retry_handlers=_retry_handlers(rate_limit_retries, connection_retries))

    def _clean(self, text: str) -> str:
        return text.replace(self._url, "<webhook>")  # the URL is the credential

    def send(self, message: Message, thread_ts: str | None = None, channel: str | None = None) -> Delivery:
        try:
            resp = self.client.send(text=message.text, blocks=message.blocks)
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, resets after the retries ran out
            return Delivery(False, self.via, self._clean(f"{type(exc).__name__}: {exc}"))
        body = (resp.body or "").strip()
        if resp.status_code == 200 and body == "ok":
            return Delivery(True, self.via)
        err = self._clean(f"HTTP {resp.status_code} {body[:200]}")
        permanent = resp.status_code in (400, 403, 404, 410) or body in PERMANENT_WEBHOOK
        return Delivery(False, self.via, err, permanent=permanent)


class ApiSink:
    """chat.postMessage with a bot token (slack_sdk.WebClient): resolves reply in the alert's thread."""

    via = "slack-api"

    def __init__(self, token: str, channel: str, base_url: str | None = None, timeout: float = 10,
                 rate_limit_retries: int = 3, connection_retries: int = 2):
        from slack_sdk import WebClient

        kwargs = {"base_url": base_url} if base_url else {}
        self.channel = channel
        self.client = WebClient(token=token, timeout=int(max(1, timeout)),
                                retry_handlers=_retry_handlers(rate_limit_retries, connection_retries), **kwargs)

    def send(self, message: Message, thread_ts: str | None = None, channel: str | None = None) -> Delivery:
        from slack_sdk.errors import SlackApiError

        try:
            resp = self.client.chat_postMessage(channel=channel or self.channel, text=message.text,
                                                blocks=message.blocks, thread_ts=thread_ts)
        except SlackApiError as exc:
            why, permanent = _api_refusal(exc)
            return Delivery(False, self.via, why, permanent=permanent)
        except Exception as exc:  # noqa: BLE001 - connection errors after the retries ran out
            return Delivery(False, self.via, f"{type(exc).__name__}: {exc}")
        return Delivery(True, self.via, thread_ts=resp.get("ts") if not thread_ts else thread_ts,
                        channel=resp.get("channel"))

    def update(self, channel: str, ts: str, message: Message) -> Delivery:
        """chat.update: the incident's first post now shows `message` (its header is the current state)."""
        try:
            self.client.chat_update(channel=channel, ts=ts, text=message.text, blocks=message.blocks)
        except Exception as exc:  # noqa: BLE001 - SlackApiError, connection errors: the thread reply stands
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return Delivery(False, self.via, f"chat.update: HTTP {status}" if status else type(exc).__name__)
        return Delivery(True, self.via, thread_ts=ts, channel=channel)


    def upload(self, channel: str, thread_ts: str, data: bytes, filename: str, title: str) -> Delivery:
        """A file into the thread of `thread_ts` by Slack's upload flow (files_upload_v2:
        files.getUploadURLExternal, the bytes POSTed to its upload_url, files.completeUploadExternal).
        Needs the bot's files:write scope; a missing one is permanent."""
        from slack_sdk.errors import SlackApiError

        try:
            resp = self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, content=data,
                                               filename=filename, title=title)
        except SlackApiError as exc:
            why, permanent = _api_refusal(exc)
            return Delivery(False, self.via, self._clean(f"files upload: {why}"), permanent=permanent)
        except Exception as exc:  # noqa: BLE001 - the byte POST refused (SlackRequestError), connection errors
            return Delivery(False, self.via, self._clean(f"files upload: {type(exc).__name__}: {exc}"[:300]))
        file_id = (resp.get("file") or {}).get("id") if isinstance(resp.get("file"), dict) else None
        return Delivery(True, self.via, thread_ts=thread_ts, channel=channel, file_id=file_id)

    def _clean(self, text: str) -> str:
        token = self.client.token or ""
        return text.replace(token, "<token>") if token else text  # never the credential in a log line


class Notifier:
    """A sink with the console as fallback once the sink has failed permanently."""

    def __init__(self, sink=None, console: ConsoleSink | None = None):
        self.console = console or ConsoleSink()
        self.sink = sink or self.console
        self.broken: str | None = None
        self._printed: set[str] = set()  # alerts already shown on the console instead of Slack
        self._lock = threading.Lock()

    def send(self, message: Message, thread_ts: str | None = None, channel: str | None = None,
             key: str | None = None) -> Delivery:
        """Post `message`; `key` (the ledger's message id) keeps a console fallback to one print."""
        with self._lock:  # sweeps send from worker threads; one post at a time keeps Slack's order
            return self._send(message, thread_ts, channel, key or message.header)

    def _send(self, message: Message, thread_ts: str | None, channel: str | None, key: str) -> Delivery:
        if self.broken is None:
            d = self.sink.send(message, thread_ts=thread_ts, channel=channel)
            if d.delivered or not d.permanent:
                return d
            self.broken = d.error or "permanent error"
            self.console.note(f"Slack rejected alerts permanently ({self.broken}); fix the webhook/token. "
                              "Alerts print here and stay pending until Slack takes them.")
        if key not in self._printed:
            self._printed.add(key)
            self.console.send(message)
        # Shown here, not delivered: the ledger keeps it pending for Slack.
        return Delivery(False, self.sink.via, f"{self.sink.via}: {self.broken}", permanent=True)

    def update(self, channel: str, ts: str, message: Message) -> Delivery | None:
        """Edit a posted message in place where the sink can (bot token); None where it cannot."""
        update = getattr(self.sink, "update", None)
        if update is None or self.broken is not None:
            return None
        with self._lock:
            return update(channel, ts, message)


    def upload(self, channel: str, thread_ts: str, data: bytes, filename: str, title: str) -> Delivery | None:
        """Upload a file into a thread where the sink can (bot token); None where it cannot."""
        upload = getattr(self.sink, "upload", None)
        if upload is None or self.broken is not None:
            return None
        with self._lock:
            return upload(channel, thread_ts, data, filename, title)


def check_webhook_url(url: str) -> None:
    """Refuse anything but https:// (plain http:// only to a loopback address, e.g. a local stand-in)."""
    from agent.protocol.errors import ConfigError

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _loopback(parts.hostname):
        return
    raise ConfigError("--slack-webhook must be an https:// URL (Slack: Apps > Incoming Webhooks)")


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def make_notifier(webhook_url: str | None = None, token: str | None = None, channel: str | None = None,
                  api_url: str | None = None, console_file=None) -> Notifier:
    """A Notifier for whatever is configured: bot token + channel, webhook, or the terminal."""
    from agent.protocol.errors import ConfigError

    console = ConsoleSink(console_file)
    if token:
        if not channel:
            raise ConfigError("--slack-token needs --slack-channel (e.g. --slack-channel '#training-alerts')")
        return Notifier(ApiSink(token, channel, base_url=api_url), console)
    if webhook_url:
        check_webhook_url(webhook_url)
        return Notifier(WebhookSink(webhook_url), console)
    return Notifier(None, console)
