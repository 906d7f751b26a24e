"""`ctl tail`: follow a run's log from the store's chunks until a marker says how it ended.

Reads only new chunks (cursor = last chunk key, listed with StartAfter), so following a long
run never replays it. Exit codes: 0 completed, 1 failed (cause and fix printed), 3 stale (no
heartbeat for too long), 130 when the user pressed Ctrl-C (the run goes on).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.errors import StoreError
from agent.protocol.runstore import RunStore

COMPLETED, FAILED, STALE, RUNNING = 0, 1, 3, None


def stale_reason(now: float, hb: p.Heartbeat | None, md: p.Metadata | None, stale_after_s: float | None) -> str | None:
    """Why the run looks stale, or None (pure). Default limit: 3 heartbeats + 30 s."""
    hb_s = hb.heartbeat_s if hb else (md.heartbeat_s if md else 30.0)
    limit = stale_after_s if stale_after_s is not None else 3 * hb_s + 30
    if hb is not None:
        age = now - hb.ts
        if age > limit:
            return (f"no heartbeat for {fmt_duration(age)} (expected every {hb_s:g}s): the agent or the box is "
                    f"down or cut off from the store")
        return None
    if md is not None and now - md.created > limit:
        return (f"launched {fmt_duration(now - md.created)} ago and the agent never sent a heartbeat: "
                f"look at agent.out in the run's folder on the box")
    return None


def status_line(pr: p.Progress | None, hb: p.Heartbeat | None, now: float) -> str:
    """phase | step/total | loss | tokens/s | ETA | heartbeat age (pure)."""
    parts = [f"phase {(pr.phase if pr and pr.phase else None) or (hb.phase if hb else None) or '-'}"]
    if pr and pr.step is not None:
        parts.append(f"step {pr.step}/{pr.total_steps}" if pr.total_steps else f"step {pr.step}")
    if pr and pr.loss is not None:
        parts.append(f"loss {p.fmt_metric(pr.loss)}")
    if pr and pr.tokens_per_s:
        parts.append(f"{p.fmt_metric(pr.tokens_per_s, ',.0f')} tok/s")
    if pr and pr.eta_s is not None:
        parts.append(f"ETA {fmt_duration(pr.eta_s)}")
    parts.append(f"heartbeat {fmt_duration(now - hb.ts) + ' ago' if hb else 'none yet'}")
    return " | ".join(parts)


def error_text(run_id: str, e: p.ErrorMarker) -> str:
    how = f"exit code {e.exit_code}" if e.exit_code is not None else (f"signal {e.signal}" if e.signal else "")
    lines = [f"run {run_id} FAILED{' (' + how + ')' if how else ''}: {e.cause}"]
    if e.summary:
        lines.append(f"  what happened: {e.summary}")
    lines.append(f"  fix: {e.remediation}")
    if e.last_step is not None:
        lines.append(f"  last step: {e.last_step}" + (f", loss {p.fmt_metric(e.last_loss)}" if e.last_loss is not None else ""))
    return "\n".join(lines)


def complete_text(run_id: str, c: p.CompleteMarker) -> str:
    lines = [f"run {run_id} COMPLETED in {fmt_duration(c.duration_s)}"]
    if c.final_metrics:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(c.final_metrics.items())))
    for a in c.artifacts:
        lines.append(f"  artifact {a.get('name', '?')}: {a.get('uri', '?')} ({a.get('size', '?')} bytes)")
    return "\n".join(lines)


def last_lines_cursor(rs: RunStore, run_id: str, n: int) -> tuple[bytes, str | None]:
    """The last `n` log lines and the cursor after them, reading chunks from the end only."""
    keys = list(rs.list_log_chunks(run_id))
    if not keys:
        return b"", None
    parts: list[bytes] = []
    for key in reversed(keys):
        data = rs.store.get(key) or b""
        parts.insert(0, data)
        if b"".join(parts).count(b"\n") > n:
            break
    lines = b"".join(parts).splitlines(keepends=True)
    return b"".join(lines[-n:]) if n else b"", keys[-1]


@dataclass
class Tail:
    """One tail session; `clock`, `sleep` and the writers are injectable for tests."""

    rs: RunStore
    run_id: str
    poll_s: float = 2.0
    stale_after_s: float | None = None
    max_backoff_s: float = 30.0
    out: object = field(default_factory=lambda: sys.stdout)
    err: object = field(default_factory=lambda: sys.stderr)
    show_status: bool = False
    clock: object = time.time
    sleep: object = time.sleep
    cursor: str | None = None
    _status_shown: bool = False

    def _write_log(self, data: bytes) -> None:
        if not data:
            return
        self._clear_status()
        self.out.write(data.decode("utf-8", "replace"))
        self.out.flush()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[K")
            self._status_shown = False

    def _show_status(self, text: str) -> None:
        if self.show_status:
            self._clear_status()
            self.out.write(text[:200])
            self.out.flush()
            self._status_shown = True

    def _drain(self) -> None:
        while True:
            lr = self.rs.read_logs(self.run_id, self.cursor)
            if not lr.chunks:
                return
            self._write_log(lr.data)
            self.cursor = lr.cursor

    def check_once(self) -> int | None:
        """Print new log bytes; the exit code when the run is over or stale, else None."""
        self._drain()
        if self.rs.store.exists(self.rs.k(self.run_id, p.COMPLETE)):
            self._drain()  # lines flushed just before the marker
            self._clear_status()
            self.out.write(complete_text(self.run_id, self.rs.read_complete(self.run_id)) + "\n")
            return COMPLETED
        if self.rs.store.exists(self.rs.k(self.run_id, p.ERROR)):
            self._drain()
            self._clear_status()
            self.out.write(error_text(self.run_id, self.rs.read_error(self.run_id)) + "\n")
            return FAILED
        now = self.clock()
        hb, md = self.rs.read_heartbeat(self.run_id), self.rs.read_metadata(self.run_id)
        why = stale_reason(now, hb, md, self.stale_after_s)
        if why:
            self._clear_status()
            self.out.write(f"run {self.run_id} looks STALE: {why}. `ctl status {self.run_id}` shows the "
                           f"instance state.\n")
            return STALE
        self._show_status(status_line(self.rs.read_progress(self.run_id), hb, now))
        return RUNNING

    def run(self, follow: bool = True) -> int:
        """Follow until the run ends; store errors are retried with backoff, forever."""
        backoff = self.poll_s
        while True:
            try:
                code = self.check_once()
                backoff = self.poll_s
            except StoreError as exc:
                self._clear_status()
                self.err.write(f"store unreachable ({str(exc).splitlines()[0][:160]}); retrying in "
                               f"{backoff:.0f}s (the run is not affected)\n")
                self.err.flush()
                self.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if code is not None:
                self.out.flush()
                return code
            if not follow:
                self._clear_status()
                return 0
            self.sleep(self.poll_s)
