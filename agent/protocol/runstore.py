"""Typed access to runs in a store: the only place that knows where each record lives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from agent.protocol import records as p
from agent.protocol.errors import NotFound
from agent.protocol.runid import RUN_ID_RE, validate_run_id
from agent.protocol.store import Store, Versioned


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

    def finished(self, run_id: str) -> bool:
        """Whether the run has a terminal marker (`_error` or `_complete`)."""
        return self.store.exists(self.k(run_id, p.COMPLETE)) or self.store.exists(self.k(run_id, p.ERROR))

    def markers(self, run_id: str) -> set[str]:
        """Which of the run's top-level `_` records (`_error`, `_complete`, `_alerts.json`) exist: one listing."""
        return {k.rsplit("/", 1)[-1] for k in self.store.list(self.k(run_id, "_"))}

    def location(self, run_id: str, name: str = "") -> str:
        """Where `name` of a run lives, as a URL a user can copy (`s3://...` or `file://...`)."""
        return self.store.location(self.k(run_id, name))

    def console_url(self, run_id: str) -> str | None:
        """A link to browse the run's folder (the S3 console), if the backend has one."""
        return self.store.console_url(run_id)

    # -- records ------------------------------------------------------------------------
    def _read(self, run_id: str, cls):
        raw = self.store.get(self.k(run_id, cls.NAME))
        return None if raw is None else cls.from_bytes(raw)

    def write_metadata(self, md: p.Metadata) -> None:
        md.updated = time.time()
        self.store.put(self.k(md.run_id, p.METADATA), md.to_bytes())

    def read_metadata(self, run_id: str) -> p.Metadata | None:
        return self._read(run_id, p.Metadata)

    def delete_metadata(self, run_id: str) -> None:
        """Remove `metadata.json` (a launch taking back the record of a run that never started)."""
        self.store.delete(self.k(run_id, p.METADATA))

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

    def stop_requested(self, run_id: str) -> bool:
        """Whether `control/stop` exists (without reading it)."""
        return self.store.exists(self.k(run_id, p.STOP))

    # -- logs -----------------------------------------------------------------------------
    def put_log_chunk(self, run_id: str, seq: int, data: bytes) -> None:
        """Upload chunk `seq`. Re-uploading the same seq with the same bytes is harmless."""
        self.store.put(self.k(run_id, p.chunk_name(seq)), data, tags=p.LOG_CHUNK_TAGS)

    def list_log_chunks(self, run_id: str, after: str | None = None) -> Iterator[str]:
        """Chunk keys in order, strictly after the cursor `after` (a chunk key)."""
        for k in self.store.list(self.k(run_id, p.LOGS), start_after=after):
            if p.chunk_seq(k) is not None:
                yield k

    def read_log_chunk(self, chunk_key: str) -> bytes | None:
        """One chunk's bytes by the key `list_log_chunks` gave (None if it vanished meanwhile)."""
        return self.store.get(chunk_key)

    def read_logs(self, run_id: str, cursor: str | None = None, max_chunks: int | None = None) -> LogRead:
        """Bytes of the chunks after `cursor`, concatenated in order, and the new cursor."""
        parts, last, n = [], cursor, 0
        for ck in self.list_log_chunks(run_id, after=cursor):
            data = self.read_log_chunk(ck)
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

    def artifact_location(self, run_id: str, relpath: str = "") -> str:
        """`s3://.../<run-id>/artifacts/<relpath>`: what `_complete` and messages name."""
        return self.store.location(self.artifact_key(run_id, relpath))

    def list_artifacts(self, run_id: str) -> list[str]:
        return list(self.store.list(self.k(run_id, p.ARTIFACTS)))

    def artifact_size_and_etag(self, key: str) -> tuple[int, str] | None:
        """(size, etag) of a stored artifact file by its `artifact_key`, None when absent."""
        return self.store.size_and_etag(key)

    def upload_artifact(self, key: str, path) -> None:
        """Copy a local file to its `artifact_key` (multipart on S3)."""
        self.store.upload_file(key, path)

    def download_artifact(self, key: str, path) -> None:
        """Copy a stored artifact file (a key from `list_artifacts`) to a local path."""
        self.store.download_file(key, path)

    # -- the watcher's records: alert ledger, done index, orphan records ---------------------
    def read_alerts_versioned(self, run_id: str) -> Versioned | None:
        """`_alerts.json` with its version tag for a compare-and-set, None when absent."""
        return self.store.get_versioned(self.k(run_id, p.ALERTS))

    def write_alerts(self, run_id: str, data: bytes, etag: str | None) -> bool:
        """Store the ledger if it is still version `etag` (None: create-only). True if this call won."""
        k = self.k(run_id, p.ALERTS)
        return self.store.put_if_absent(k, data) if etag is None else self.store.put_if_match(k, data, etag)

    def done_index(self) -> set[str]:
        """Run ids the watcher marked finished and fully alerted (`_index/done/<run-id>`)."""
        return {k[len(p.INDEX_DONE):] for k in self.store.list(p.INDEX_DONE)}

    def mark_done(self, run_id: str, data: bytes) -> bool:
        """Create the run's done marker; False if one exists (the first watcher wins)."""
        return self.store.put_if_absent(p.index_done_name(validate_run_id(run_id)), data)

    def unmark_done(self, run_id: str) -> None:
        """Put the run back among the runs a sweep reads."""
        self.store.delete(p.index_done_name(validate_run_id(run_id)))

    def list_orphans(self) -> list[tuple[str, str]]:
        """(region, instance id) of every stored orphan record."""
        return [w for k in self.store.list(p.ORPHANS) if (w := p.orphan_of(k)) is not None]

    def read_orphan_versioned(self, region: str, instance_id: str) -> Versioned | None:
        return self.store.get_versioned(p.orphan_name(region, instance_id))

    def write_orphan(self, region: str, instance_id: str, data: bytes, etag: str | None) -> bool:
        """Store an orphan record if still version `etag` (None: create-only). True if this call won."""
        k = p.orphan_name(region, instance_id)
        return self.store.put_if_absent(k, data) if etag is None else self.store.put_if_match(k, data, etag)

    def delete_orphan(self, region: str, instance_id: str) -> None:
        self.store.delete(p.orphan_name(region, instance_id))

    # -- attempts: a resumed run's earlier tries (agent.protocol.attempts) -------------------
    def read_error_bytes(self, run_id: str) -> bytes | None:
        """`_error` exactly as stored: an archived attempt keeps it byte for byte."""
        return self.store.get(self.k(run_id, p.ERROR))

    def restore_error_bytes(self, run_id: str, data: bytes) -> bool:
        """Create `_error` from archived bytes; False if a marker exists."""
        return self.store.put_if_absent(self.k(run_id, p.ERROR), data)

    def delete_error(self, run_id: str) -> None:
        self.store.delete(self.k(run_id, p.ERROR))

    def attempt_numbers(self, run_id: str) -> list[int]:
        """Numbers of the archived attempts of a run, ascending."""
        return sorted(n for k in self.store.list(self.k(run_id, p.ATTEMPTS)) if (n := p.attempt_of(k)) is not None)

    def read_attempt_error(self, run_id: str, n: int) -> bytes | None:
        return self.store.get(self.k(run_id, p.attempt_name(n, p.ERROR)))

    def claim_attempt(self, run_id: str, n: int, error_bytes: bytes) -> bool:
        """Create `attempts/<n>/_error` (create-only: of two racing resumes one wins)."""
        return self.store.put_if_absent(self.k(run_id, p.attempt_name(n, p.ERROR)), error_bytes)

    def archive_alerts(self, run_id: str, n: int) -> None:
        """Move the alert ledger to `attempts/<n>/`, so the next attempt is alerted on afresh."""
        ledger = self.store.get(self.k(run_id, p.ALERTS))
        if ledger is not None:
            self.store.put(self.k(run_id, p.attempt_name(n, p.ALERTS)), ledger)
            self.store.delete(self.k(run_id, p.ALERTS))

    def unarchive_alerts(self, run_id: str, n: int) -> None:
        """Put attempt `n`'s ledger back unless the run has one again."""
        ledger = self.store.get(self.k(run_id, p.attempt_name(n, p.ALERTS)))
        if ledger is not None and not self.store.exists(self.k(run_id, p.ALERTS)):
            self.store.put(self.k(run_id, p.ALERTS), ledger)

    def drop_attempt(self, run_id: str, n: int) -> None:
        self.store.delete_prefix(self.k(run_id, p.attempt_name(n)))
