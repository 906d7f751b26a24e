"""Typed access to runs in a store: the only place that knows where each record lives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from agent.protocol import records as p
from agent.protocol.errors import NotFound
from agent.protocol.runid import RUN_ID_RE, validate_run_id
from agent.protocol.store import Store


@dataclass
class LogRead:
    """Bytes read from log chunks and the cursor (last chunk key) to continue from."""

    data: bytes
    cursor: str | None
    chunks: int


class RunStore:
    """Run-level reads and writes over any Store backend."""

    def __init__(self, store: Store):
        self.store = store

    @property
    def url(self) -> str:
        return self.store.url

    def k(self, run_id: str, name: str) -> str:
        """Key of `name` in a run, after validating the run id."""
        return p.key(validate_run_id(run_id), name)

    # -- runs ---------------------------------------------------------------------------
    def list_runs(self) -> list[str]:
        """Every run id in the store (folders that are not valid run ids are ignored)."""
        return [d for d in self.store.list_dirs("") if RUN_ID_RE.fullmatch(d)]

    def run_exists(self, run_id: str) -> bool:
        return self.store.exists(self.k(run_id, p.METADATA)) or any(
            True for _ in self.store.list(self.k(run_id, "")))

    def require_run(self, run_id: str) -> None:
        """Raise NotFound with the store named when the run is not there."""
        if not self.run_exists(run_id):
            raise NotFound(f"run {run_id} not found in {self.url} (ctl runs --store {self.url} lists runs)")

    # -- records ------------------------------------------------------------------------
    def _read(self, run_id: str, cls):
        raw = self.store.get(self.k(run_id, cls.NAME))
        return None if raw is None else cls.from_bytes(raw)

    def write_metadata(self, md: p.Metadata) -> None:
        md.updated = time.time()
        self.store.put(self.k(md.run_id, p.METADATA), md.to_bytes())

    def read_metadata(self, run_id: str) -> p.Metadata | None:
        return self._read(run_id, p.Metadata)

    def write_heartbeat(self, run_id: str, hb: p.Heartbeat) -> None:
        self.store.put(self.k(run_id, p.HEARTBEAT), hb.to_bytes())

    def read_heartbeat(self, run_id: str) -> p.Heartbeat | None:
        return self._read(run_id, p.Heartbeat)

    def write_progress(self, run_id: str, pr: p.Progress) -> None:
        self.store.put(self.k(run_id, p.PROGRESS), pr.to_bytes())

    def read_progress(self, run_id: str) -> p.Progress | None:
        return self._read(run_id, p.Progress)

    def write_history(self, run_id: str, points: list[dict]) -> None:
        """The loss curve so far: [{"step", "loss", "lr", "ts"}, ...]."""
        self.store.put_json(self.k(run_id, p.HISTORY), points)

    def read_history(self, run_id: str) -> list[dict]:
        return self.store.get_json(self.k(run_id, p.HISTORY)) or []

    # -- terminal markers: create-only, and never both ------------------------------------
    def write_error(self, run_id: str, marker: p.ErrorMarker) -> bool:
        """Create `_error` unless a marker exists. True if this call wrote it."""
        if self.store.exists(self.k(run_id, p.COMPLETE)):
            return False
        return self.store.put_if_absent(self.k(run_id, p.ERROR), marker.to_bytes())

    def write_complete(self, run_id: str, marker: p.CompleteMarker) -> bool:
        """Create `_complete` unless a marker exists. True if this call wrote it."""
        if self.store.exists(self.k(run_id, p.ERROR)):
            return False
        return self.store.put_if_absent(self.k(run_id, p.COMPLETE), marker.to_bytes())

    def read_error(self, run_id: str) -> p.ErrorMarker | None:
        return self._read(run_id, p.ErrorMarker)

    def read_complete(self, run_id: str) -> p.CompleteMarker | None:
        return self._read(run_id, p.CompleteMarker)

    # -- control ------------------------------------------------------------------------
    def request_stop(self, run_id: str, requested_by: str = "", reason: str = "stopped by user") -> bool:
        """Create `control/stop`; False if a stop was already requested."""
        req = p.StopRequest(ts=time.time(), requested_by=requested_by, reason=reason)
        return self.store.put_if_absent(self.k(run_id, p.STOP), req.to_bytes())

    def read_stop(self, run_id: str) -> p.StopRequest | None:
        return self._read(run_id, p.StopRequest)

    # -- logs -----------------------------------------------------------------------------
    def put_log_chunk(self, run_id: str, seq: int, data: bytes) -> None:
        """Upload chunk `seq`. Re-uploading the same seq with the same bytes is harmless."""
        self.store.put(self.k(run_id, p.chunk_name(seq)), data, tags=p.LOG_CHUNK_TAGS)

    def list_log_chunks(self, run_id: str, after: str | None = None) -> Iterator[str]:
        """Chunk keys in order, strictly after the cursor `after` (a chunk key)."""
        for k in self.store.list(self.k(run_id, p.LOGS), start_after=after):
            if p.chunk_seq(k) is not None:
                yield k

    def read_logs(self, run_id: str, cursor: str | None = None, max_chunks: int | None = None) -> LogRead:
        """Bytes of the chunks after `cursor`, concatenated in order, and the new cursor."""
        parts, last, n = [], cursor, 0
        for ck in self.list_log_chunks(run_id, after=cursor):
            data = self.store.get(ck)
            if data is None:  # deleted between list and get: stop here, retry later from `last`
                break
            parts.append(data)
            last, n = ck, n + 1
            if max_chunks and n >= max_chunks:
                break
        return LogRead(b"".join(parts), last, n)

    def write_latest_log(self, run_id: str, text: str) -> None:
        self.store.put(self.k(run_id, p.LOG_LATEST), text.encode())

    def read_latest_log(self, run_id: str) -> str | None:
        raw = self.store.get(self.k(run_id, p.LOG_LATEST))
        return None if raw is None else raw.decode("utf-8", "replace")

    # -- artifacts ------------------------------------------------------------------------
    def artifact_key(self, run_id: str, relpath: str) -> str:
        return self.k(run_id, p.ARTIFACTS + relpath.lstrip("/"))

    def list_artifacts(self, run_id: str) -> list[str]:
        return list(self.store.list(self.k(run_id, p.ARTIFACTS)))

    def delete_run(self, run_id: str) -> int:
        return self.store.delete_prefix(self.k(run_id, ""))
