"""Progress from the trainer's output: the spool file (trainer.log) read through outputreader.

The agent reads the spool on its own cursor (the log shipper keeps its own), so parsing never
delays or changes what is shipped. Once the trainer's progress file has step records (our trainer,
or TrainctlCallback) the output is no longer parsed, only watched for new bytes: `last_log_ts`,
the time the agent last saw a new byte, is what the watcher judges log silence by.

Cost stays small: one `stat` per tick while nothing is written, at most `max_read` bytes read per
tick, and the reader screens each frame with `in` tests before any regex (outputparse).
On an agent restart the spool's tail already written is read once without feeding the cadence
(its records carry no time of their own), so a replay never looks like a burst of fast steps.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from agent.daemon.outputreader import OutputReader
from agent.daemon.progress import ProgressTracker
from agent.protocol import records as p

MAX_READ = 4 << 20  # bytes per call: a flood is read over a few ticks, never in one long stall
RESTART_TAIL = 32 << 20  # on restart, the output is re-read from at most this far back


class OutputProgress:
    """Feeds new bytes of `log_path` to an OutputReader and the records into `tracker`."""

    def __init__(self, log_path: Path, tracker: ProgressTracker, rx: re.Pattern | None = None,
                 enabled: bool = True, max_read: int = MAX_READ):
        self.path, self.tracker, self.enabled, self.max_read = log_path, tracker, enabled, max_read
        self.reader = OutputReader(rx)
        self.offset = 0
        self.last_log_ts: float | None = None
        self.records = 0  # progress records parsed so far

    def catch_up(self) -> None:
        """At start: read what an earlier agent's trainer already wrote (not paced: no timing in it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_size:
            self.last_log_ts = st.st_mtime
        self.offset = max(0, st.st_size - RESTART_TAIL)
        while self.read_new(live=False, stamp=False):
            pass

    def read_new(self, now: float | None = None, live: bool = True, stamp: bool = True) -> int:
        """Read bytes appended since the last call; returns how many were read."""
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return 0
        if size <= self.offset:
            return 0
        ts = now or time.time()
        if stamp:
            self.last_log_ts = ts
        if self.tracker.source == p.Heartbeat.SOURCE_TRAINER or not self.enabled:
            self.offset = size  # the progress file is the source: only the new bytes' time matters
            return size - self.offset or 1
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.max_read)
        self.offset += len(data)
        self._apply(self.reader.feed(data), ts, live)
        return len(data)

    def finish(self) -> None:
        """The trainer ended: its unterminated last frame counts too."""
        self.read_new()
        if self.tracker.source != p.Heartbeat.SOURCE_TRAINER and self.enabled:
            self._apply(self.reader.flush(), time.time(), True)

    def _apply(self, recs, ts: float, live: bool) -> None:
        for rec in recs:
            self.tracker.output_record(rec, ts, live)
        self.records += len(recs)
