"""The push path: the markers the agent writes once (`_error`, `_complete`) name the run to sweep now.

Two sources feed `Watcher.sweep_runs`: watchdog on a local-folder store, and the SQS queue the
bucket notifies for an S3 store (infra/terraform/events.tf). Both only say *which* run to look
at; the sweep reads the run's state from the store itself, so a duplicate, late or reordered
event changes nothing (the ledger's compare-and-set keeps each message to one send). The
interrupted marker is an `_error` with cause `interrupted`, so it travels the same way. The
schedule stays the backstop for silence and hangs, which no write announces.
"""

from __future__ import annotations

import json
import queue
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

from agent.protocol import records as p
from agent.protocol.errors import ConfigError
from agent.protocol.runid import RUN_ID_RE
from agent.protocol.stacks import DEFAULT_STACK, outputs_path, saved_outputs

PUSHED = (p.ERROR, p.COMPLETE)


def run_id_of_key(key: str, prefix: str = "") -> str | None:
    """`<prefix>/<run-id>/_error` (or `_complete`) -> the run id; None for any other key."""
    prefix = prefix.strip("/")
    if prefix:
        if not key.startswith(prefix + "/"):
            return None
        key = key[len(prefix) + 1:]
    parts = key.split("/")
    if len(parts) == 2 and parts[1] in PUSHED and RUN_ID_RE.fullmatch(parts[0]):
        return parts[0]
    return None  # attempts/<n>/_error, logs, the ledger, other prefixes: not news


def run_ids_from_s3_event(doc: dict, bucket: str, prefix: str) -> set[str]:
    """The runs an S3 event notification (or its TestEvent, which names none) is about."""
    out = set()
    for rec in doc.get("Records") or []:
        s3 = rec.get("s3") or {}
        if (s3.get("bucket") or {}).get("name") != bucket:
            continue
        rid = run_id_of_key(unquote_plus((s3.get("object") or {}).get("key", "")), prefix)
        if rid:
            out.add(rid)
    return out


def runs_from_sqs_batch(event: dict, bucket: str, prefix: str) -> dict[str, set[str]]:
    """A Lambda SQS batch event -> {messageId: run ids}; unreadable bodies name no run."""
    out = {}
    for rec in event.get("Records") or []:
        if rec.get("eventSource") != "aws:sqs":
            continue
        try:
            doc = json.loads(rec.get("body") or "{}")
        except ValueError:
            doc = {}
        out[rec.get("messageId", "")] = run_ids_from_s3_event(doc if isinstance(doc, dict) else {}, bucket, prefix)
    return out


class FolderEvents:
    """watchdog on a local store's folder: a marker appearing puts its run id in a queue."""

    def __init__(self, root: str | Path):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self.root = Path(root).resolve()
        self.q: queue.Queue[str] = queue.Queue()
        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    rid = outer._run_of(path)
                    if rid:
                        outer.q.put(rid)

        self.observer = Observer()
        self.root.mkdir(parents=True, exist_ok=True)
        self.observer.schedule(Handler(), str(self.root), recursive=True)

    def _run_of(self, path) -> str | None:
        if not path:
            return None
        try:
            rel = Path(path if isinstance(path, str) else path.decode()).relative_to(self.root)
        except ValueError:
            return None
        return run_id_of_key(rel.as_posix())

    def start(self) -> None:
        self.observer.start()

    def wait(self, timeout: float) -> set[str]:
        """Run ids whose marker appeared, waiting up to `timeout` s for the first one."""
        try:
            got = {self.q.get(timeout=max(0.0, timeout))}
        except queue.Empty:
            return set()
        while True:
            try:
                got.add(self.q.get_nowait())
            except queue.Empty:
                return got

    def done(self, swept: bool = True) -> None:
        """Nothing to acknowledge: a run whose sweep failed is the next scheduled sweep's."""

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)


class QueueEvents:
    """Long-polls the SQS queue the bucket notifies; messages are deleted only after their sweep."""

    def __init__(self, queue_url: str, bucket: str, prefix: str, endpoint_url: str | None = None,
                 region: str | None = None):
        import boto3

        self.bucket, self.prefix, self.url = bucket, prefix, queue_url
        self.sqs = boto3.client("sqs", endpoint_url=endpoint_url, region_name=region or _queue_region(queue_url))
        self._handles: list[str] = []

    def start(self) -> None:
        """Nothing to start: each wait is one long poll."""

    def wait(self, timeout: float) -> set[str]:
        """One long poll of up to `timeout` s (SQS allows 20): the runs named by what arrived."""
        resp = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                        WaitTimeSeconds=int(min(20, max(0, timeout))))
        out = set()
        for m in resp.get("Messages", []):
            self._handles.append(m["ReceiptHandle"])
            try:
                doc = json.loads(m.get("Body") or "{}")
            except ValueError:
                continue
            out |= run_ids_from_s3_event(doc if isinstance(doc, dict) else {}, self.bucket, self.prefix)
        return out

    def done(self, swept: bool = True) -> None:
        """The runs were swept: delete their messages. Unswept ones are left to come back after the
        queue's visibility timeout (as they do when the watcher dies first): harmless, see above."""
        if not swept:
            self._handles = []
        while self._handles:
            batch, self._handles = self._handles[:10], self._handles[10:]
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(batch)])

    def stop(self) -> None:
        """Nothing to stop."""


def _queue_region(url: str) -> str | None:
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    return parts[1] if len(parts) > 3 and parts[0] == "sqs" else None


def open_events(spec: str | None, store, endpoint_url: str | None = None, region: str | None = None,
                stack: str = DEFAULT_STACK):
    """(the event source `--events` names for `store`, or None for schedule only; what it is, in words).

    `auto` (the default) is watchdog for a local folder, and for S3 the queue the saved stack's
    `events_queue` output names when that stack serves this store (else schedule only, and why);
    `sqs://<queue-name>` or the queue's https:// URL long-polls that queue; `none` turns pushing off."""
    spec = spec or "auto"
    local = getattr(store, "root", None)
    if spec == "none":
        return None, "schedule only (--events none)"
    if spec == "auto" and local is not None:
        return FolderEvents(local), f"markers pushed by FolderEvents (watchdog on {local})"
    if spec == "auto":
        return _stack_queue(stack, store, endpoint_url, region)
    bucket = getattr(store, "bucket", None)
    if bucket is None:
        raise ConfigError(f"--events {spec}: a queue needs an s3:// store; a local store is watched by itself")
    if spec.startswith("sqs://"):
        name = spec[len("sqs://"):].strip("/")
        if not name:
            raise ConfigError("--events sqs:// needs the queue name, e.g. sqs://trainctl-run-events")
        url, code = _queue_url(name, endpoint_url, region)
        if url is None:
            raise ConfigError(f"--events {spec}: cannot find the queue ({code}); `terraform output events_queue` "
                              "names it")
        return QueueEvents(url, bucket, store.prefix, endpoint_url, region), f"markers pushed by QueueEvents ({name})"
    if spec.startswith(("https://", "http://")):
        return QueueEvents(spec, bucket, store.prefix, endpoint_url, region), f"markers pushed by QueueEvents ({spec})"
    raise ConfigError(f"--events {spec!r}: use auto, none, sqs://<queue-name> or the queue's https:// URL")


def _queue_url(name: str, endpoint_url: str | None, region: str | None) -> tuple[str | None, str]:
    """(the queue's URL, "") or (None, why not): no such queue, no credentials."""
    import boto3

    try:
        return boto3.client("sqs", endpoint_url=endpoint_url, region_name=region).get_queue_url(
            QueueName=name)["QueueUrl"], ""
    except Exception as exc:  # noqa: BLE001 - the caller says it in one line with the fix
        return None, getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)


def _stack_queue(stack: str, store, endpoint_url: str | None, region: str | None):
    """`--events auto` on S3: the saved stack's queue when it notifies for this very store.

    Anything else is schedule only, never an error: the push path is a speed-up, and a watcher
    that worked without it must keep working (the first line says why there is no push)."""
    where = f"stack {stack!r} ({outputs_path(stack)})"
    try:
        out = saved_outputs(stack)
    except ConfigError as exc:  # a broken file must not stop a watcher that works without it
        return None, f"schedule only: {exc}"
    if out is None:
        return None, f"schedule only: no saved {where}; --events sqs://<events_queue> pushes"
    name = out.get("events_queue")
    if not name:
        return None, f"schedule only: {where} has no events_queue (push events off)"
    if not _same_store(out.get("store_url"), store):
        return None, f"schedule only: {where} notifies for {out.get('store_url')}, not {store.url}"
    region = region or out.get("region")
    url, code = _queue_url(name, endpoint_url, region)
    if url is None:
        return None, f"schedule only: the events_queue {name} of {where} cannot be found ({code})"
    return (QueueEvents(url, store.bucket, store.prefix, endpoint_url, region),
            f"markers pushed by QueueEvents ({name}, the events_queue of stack {stack!r})")


def _same_store(url: str | None, store) -> bool:
    """`s3://bucket/prefix` (a stack's store_url) names `store`'s bucket and prefix."""
    parts = urlsplit(url or "")
    return parts.scheme == "s3" and parts.netloc == store.bucket and parts.path.strip("/") == store.prefix
