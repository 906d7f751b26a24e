"""Ships the spool file (trainer.log) to the store as ordered, append-only, redacted chunks.

Cost does not grow with the log: the shipper reads only the bytes after its cursor. Each chunk is
announced in the persisted state (`pending`) before it is uploaded and committed after, so an
agent killed mid-upload re-sends exactly the same bytes under the same number when it restarts.
Chunks end on a line boundary (`\\n` or `\\r`), so redaction always sees whole lines; a partial
line is held back until it ends, the chunk limit is reached, or it has waited `partial_line_s`.
The chunks are byte-exact; only the views people read (training_log_latest.txt, the tail an
`_error` carries) show each carriage-return line by its last frame (agent.daemon.frames), so a
tqdm bar reads as the bar, not as every redraw joined into one line.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

from agent.daemon.frames import FrameFolder, fold_frames
from agent.daemon.workdir import LogCursor, Workdir
from agent.protocol.redact import redact, redact_bytes
from agent.protocol.runstore import RunStore

MAX_CHUNK = 1 << 20
LATEST_LINES = 1000


class LogShipper:
    """Incremental uploader of one run's log spool."""

    def __init__(self, rs: RunStore, run_id: str, wd: Workdir, cursor: LogCursor, save: Callable[[], None],
                 flush_s: float = 2.0, latest_s: float = 10.0, partial_line_s: float = 10.0,
                 max_chunk: int = MAX_CHUNK):
        self.rs, self.run_id, self.wd, self.cursor, self._save = rs, run_id, wd, cursor, save
        self.flush_s, self.latest_s, self.partial_line_s, self.max_chunk = flush_s, latest_s, partial_line_s, max_chunk
        self.last_ship = float("-inf")
        self.last_latest = float("-inf")
        self.latest_dirty = False
        self.puts = 0
        self.bytes_uploaded = 0
        self._partial_since: float | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=LATEST_LINES)
        self._folder = FrameFolder()
        self._load_tail()

    # -- state -----------------------------------------------------------------------------
    def _load_tail(self) -> None:
        """Seed the latest-lines window from what was already shipped (agent restart)."""
        end = self.cursor.offset
        if end <= 0:
            return
        start = max(0, end - 256 * 1024)
        with open(self.wd.log, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        if start > 0:
            data = data[data.find(b"\n") + 1:]
        self._feed(redact_bytes(data).decode("utf-8", "replace"))

    def backlog(self) -> int:
        """Spooled bytes not yet in the store."""
        try:
            return max(0, os.path.getsize(self.wd.log) - self.cursor.offset)
        except OSError:
            return 0

    def due(self, now: float) -> bool:
        backlog = self.backlog()
        return bool(self.cursor.pending) or backlog >= self.max_chunk or (
            backlog > 0 and now - self.last_ship >= self.flush_s)

    # -- shipping -----------------------------------------------------------------------------
    def ship(self, now: float, final: bool = False, max_chunks: int = 16) -> int:
        """Upload due chunks in order (all remaining bytes when `final`). Raises StoreError on failure,
        leaving the cursor where it was, so the caller can back off and call again."""
        sent = 0
        while sent < max_chunks:
            if not self.cursor.pending:
                span = self._next_span(now, final)
                if span is None:
                    break
                self.cursor.pending = {"seq": self.cursor.next_seq, "start": span[0], "end": span[1]}
                self._save()
            pend = self.cursor.pending
            data = self._read(pend["start"], pend["end"])
            clean = redact_bytes(data)
            self.rs.put_log_chunk(self.run_id, pend["seq"], clean)
            self.puts += 1
            self.bytes_uploaded += len(clean)
            self.cursor.offset, self.cursor.next_seq, self.cursor.pending = pend["end"], pend["seq"] + 1, None
            self._save()
            self._feed(clean.decode("utf-8", "replace"))
            sent += 1
            # Lines that arrived during that upload wait for the next flush, unless a whole chunk is
            # ready (catching up after an outage): one PUT per flush interval in steady state.
            self.last_ship = now
        return sent

    def _next_span(self, now: float, final: bool) -> tuple[int, int] | None:
        start = self.cursor.offset
        size = os.path.getsize(self.wd.log)
        if size <= start:
            self._partial_since = None
            return None
        if not final and size - start < self.max_chunk and now - self.last_ship < self.flush_s:
            return None
        data = self._read(start, min(size, start + self.max_chunk))
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if cut == len(data) or (final and size <= start + len(data)):
            self._partial_since = None
            return start, start + len(data)
        if cut > 0:
            if self._partial_since is None:
                self._partial_since = now
            return start, start + cut
        if len(data) >= self.max_chunk:  # one line longer than a chunk: it has to be split
            return start, start + len(data)
        # Only a partial line is waiting: hold it back a while so a secret is never cut in two.
        if self._partial_since is None:
            self._partial_since = now
        if now - self._partial_since >= self.partial_line_s:
            self._partial_since = None
            return start, start + len(data)
        return None

    def _read(self, start: int, end: int) -> bytes:
        with open(self.wd.log, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)

    # -- latest lines -------------------------------------------------------------------------
    def _feed(self, text: str) -> None:
        done = self._folder.feed(text)
        if done:
            self._lines.extend(done.split("\n")[:-1])
        self.latest_dirty = True

    @property
    def _frag(self) -> str:
        """The unfinished last line as a terminal shows it now (a live bar's latest frame)."""
        return self._folder.pending()

    def tail(self, n: int = 50) -> list[str]:
        """The last `n` shipped lines plus any unshipped spool tail, redacted."""
        lines = list(self._lines)[-n:]
        extra = self._read(self.cursor.offset, self.cursor.offset + 256 * 1024) if self.backlog() else b""
        text = fold_frames(self._frag + redact(extra.decode("utf-8", "replace")))
        lines += [ln for ln in text.split("\n") if ln]
        return lines[-n:]

    def refresh_latest(self, now: float, force: bool = False) -> bool:
        """Rewrite `logs/training_log_latest.txt` at most every `latest_s` (always when `force`)."""
        if not self.latest_dirty or (not force and now - self.last_latest < self.latest_s):
            return False
        text = "\n".join(self._lines) + ("\n" + self._frag if self._frag else "\n")
        self.rs.write_latest_log(self.run_id, text)
        self.puts += 1
        self.last_latest = now
        self.latest_dirty = False
        return True
