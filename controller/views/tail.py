"""`ctl tail`: follow a run's log from the store's chunks until the watcher's state ends it.

Reads only new chunks (cursor = last chunk key, listed with StartAfter), so following a long
run never replays it. A tqdm bar's carriage-return frames are shown as a terminal would leave them:
the last frame of each line (agent.protocol.frames); a line still being written is held until it
ends, or until the tail stops. The stored chunks stay byte-exact. When to stop, the exit code and the closing words come from the watcher's
`assess` (controller.views.facts): 0 completed; 1 failed, stopped_by_user, interrupted, corrupt
(cause and fix printed); 3 stale (agent_silent, hung, instance_gone); 130 when the user pressed
Ctrl-C (the run goes on).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.errors import StoreError
from agent.protocol.frames import FrameFolder
from agent.protocol.runstore import RunStore
from controller.views.facts import TAIL_EXIT, finished, read_facts, view_settings, wants_instance
from ops.ec2 import Ec2Enricher
from ops.state import COMPLETED as S_COMPLETED
from ops.state import CORRUPT, HEALTHY, InstanceInfo, RunFacts, RunState, Settings, assess

COMPLETED, FAILED, STALE, RUNNING = 0, 1, 3, None
_WORD = {"failed": "FAILED", "stopped_by_user": "STOPPED BY USER", "interrupted": "INTERRUPTED"}


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


def error_text(run_id: str, e: p.ErrorMarker, st: RunState | None = None) -> str:
    """The closing words of a run that `_error` ended: the watcher's state and reason, cause and fix."""
    how = f"exit code {e.exit_code}" if e.exit_code is not None else (f"signal {e.signal}" if e.signal else "")
    word = _WORD.get(st.state, "FAILED") if st else "FAILED"
    lines = [f"run {run_id} {word}{' (' + how + ')' if how else ''}: {e.cause}"]
    what = st.reason if st else e.summary
    if what and what != e.cause:
        lines.append(f"  what happened: {what}")
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


def closing_text(run_id: str, f: RunFacts, st: RunState) -> str:
    """What `ctl tail` prints when it stops: the watcher's state and reason, in every case."""
    if st.state == S_COMPLETED and f.complete:
        return complete_text(run_id, f.complete) + f"\n  {st.reason}"
    if st.state == CORRUPT or (st.state == S_COMPLETED and not f.complete):
        return f"run {run_id} {st.state.upper()}: {st.reason}"
    if finished(st):
        return error_text(run_id, f.error, st) if f.error else f"run {run_id} {_WORD.get(st.state, 'FAILED')}: {st.reason}"
    return (f"run {run_id} looks STALE ({st.state}): {st.reason}. `ctl status {run_id}` shows the instance "
            f"state.")


def last_lines_cursor(rs: RunStore, run_id: str, n: int) -> tuple[bytes, str | None]:
    """The last `n` log lines and the cursor after them, reading chunks from the end only."""
    keys = list(rs.list_log_chunks(run_id))
    if not keys:
        return b"", None
    parts: list[bytes] = []
    for key in reversed(keys):
        data = rs.read_log_chunk(key) or b""
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
    settings: Settings | None = None  # None: the watcher's, from the environment, grace = stale_after_s
    ec2: Ec2Enricher | None = None  # asks about the run's instance, as the watcher does
    instance_every_s: float = 60.0  # at most one describe_instances per minute while following
    state: RunState | None = None  # the last verdict
    _status_shown: bool = False
    _instance: InstanceInfo | None = None
    _instance_at: float = -math.inf
    _folder: FrameFolder = field(default_factory=lambda: FrameFolder(binary=True))

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = view_settings(grace_s=self.stale_after_s)

    def show(self, data: bytes) -> None:
        """Print log bytes (the lines before the cursor, then each new chunk), frames folded."""
        self._write_log(data)

    def _write_log(self, data: bytes) -> None:
        lines = self._folder.feed(data) if data else b""
        if not lines:
            return
        self._clear_status()
        self.out.write(lines.decode("utf-8", "replace"))
        self.out.flush()

    def _flush_log(self) -> None:
        """The tail stops: the line still being written, as it stands (its last frame)."""
        rest = self._folder.flush()
        if rest:
            self._clear_status()
            self.out.write(rest.decode("utf-8", "replace") + "\n")

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

    def _add_instance(self, f: RunFacts, now: float) -> None:
        want = wants_instance(f)
        if self.ec2 is None or want is None:
            return
        if now - self._instance_at >= self.instance_every_s:
            self._instance = self.ec2.describe([want]).get(want[0])
            self._instance_at = now
        f.instance = self._instance

    def check_once(self) -> int | None:
        """Print new log bytes; the exit code when the watcher's state ends the tail, else None."""
        self._drain()
        now = self.clock()
        f = read_facts(self.rs, self.run_id)
        self._add_instance(f, now)
        st = self.state = assess(f, now, self.settings)
        code = TAIL_EXIT.get(st.state)
        if code is None:
            line = status_line(self.rs.read_progress(self.run_id), f.heartbeat, now)
            self._show_status(line + ("" if st.state == HEALTHY else f" | {st.state}: {st.reason}"))
            return RUNNING
        if finished(st):
            self._drain()  # lines flushed just before the marker
        self._flush_log()
        self._clear_status()
        self.out.write(closing_text(self.run_id, f, st) + "\n")
        return code

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
                self._flush_log()
                self._clear_status()
                if self.state is not None:  # stdout stays the log alone; the verdict goes to stderr
                    self.err.write(f"run {self.run_id} is {self.state.state}: {self.state.reason}\n")
                    self.err.flush()
                return 0
            self.sleep(self.poll_s)
