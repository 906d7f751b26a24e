"""Counts the agent's S3 requests and bytes (by operation and key kind) from botocore's send events.

Kept in the workdir's agent_state.json and logged at exit, so S3 cost per run is a measured
figure (the benchmark reads it) rather than an estimate.
"""

from __future__ import annotations

from collections import Counter


class RequestStats:
    """Requests actually sent (retries included), keyed like `PutObject:chunk`."""

    def __init__(self):
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def attach(self, client) -> None:
        # "before-send.s3" also fires for "before-send.s3.<Operation>" (hierarchical events).
        client.meta.events.register("before-send.s3", self._on_send)

    def _on_send(self, request, event_name: str, **_):
        op = event_name.rsplit(".", 1)[-1]
        path = request.url.split("?", 1)[0]
        kind = "chunk" if "/logs/" in path and path.endswith(".log") else (
            "latest" if path.endswith("training_log_latest.txt") else "other")
        name = f"{op}:{kind}"
        self.requests[name] += 1
        try:
            self.bytes[name] += int(request.headers.get("Content-Length") or 0)
        except (TypeError, ValueError):
            pass

    def to_dict(self) -> dict:
        puts = sum(n for k, n in self.requests.items() if k.startswith(("PutObject", "UploadPart")))
        return {"requests": dict(self.requests), "bytes": dict(self.bytes), "puts": puts,
                "put_bytes": sum(b for k, b in self.bytes.items() if k.startswith(("PutObject", "UploadPart")))}
