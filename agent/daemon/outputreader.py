"""A trainer's output as a stream: chunks of bytes in, progress records out, in order.

agent.daemon.outputparse reads one frame (a line, or one carriage-return redraw) at a time and knows
nothing of what came before; `OutputReader` is the stateful half: it decodes UTF-8 across chunk
boundaries, splits frames, reads a trailing bar frame at once, and follows the training loop's
tqdm bar (locking onto it, telling the evaluation bar apart, counting on across epochs, and
giving a step-less HF log dict the bar's step).
"""

from __future__ import annotations

import codecs
import re

from agent.daemon.outputparse import Parsed, parse_line

MAX_FRAME_CHARS = 65536  # an unterminated frame keeps only its tail: memory stays bounded
_FRAME_END = re.compile(r"[\r\n]")


class OutputReader:
    """Chunks of a trainer's output in, progress records out, in order.

    Frames end at `\\n` or `\\r`; a trailing frame that already looks whole (a bar ends in `]`) is
    read at once: a stopped trainer's last step is not held back for a frame that never comes.
    The first training-looking bar is locked onto; while it is unfinished, a bar of another total
    or with a restarted clock (HF's evaluation bar) is `other_bar`. A finished bar that restarts
    (one bar per epoch) counts on from where it ended, with no total. HF prints a log dict without
    its step and tqdm redraws the bar right after it, so once a bar is known a step-less log or
    eval record waits for the next record and takes the bar's step and total from it."""

    def __init__(self, rx: re.Pattern | None = None):
        self.rx = rx
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._pending_read = False
        self._lock: Parsed | None = None  # the training bar's latest frame
        self._offset = 0  # steps of the locked bar's earlier rounds
        self._logs_since_lock = 0
        self._held: Parsed | None = None  # a step-less log waiting for the bar's redraw

    def feed(self, data: bytes | str) -> list[Parsed]:
        """Records for the frames completed by `data` (and a trailing frame that looks whole)."""
        text = self._decoder.decode(data) if isinstance(data, bytes) else data
        if not text:
            return []
        buf = self._pending + text
        first_read, screen = self._pending_read, self.rx is None
        if screen and "{" not in buf and "[" not in buf:  # plain text only (most output): nothing to split
            cut = max(buf.rfind("\n"), buf.rfind("\r")) + 1
            self._pending, self._pending_read = buf[cut:][-MAX_FRAME_CHARS:], first_read and cut == 0
            return []
        frames = _FRAME_END.split(buf) if "\r" in buf else buf.split("\n")
        out: list[Parsed] = []
        for frame in frames[1 if first_read else 0:-1]:
            if screen and "{" not in frame and "[" not in frame:  # most lines: no dict, no bar
                continue
            self._read(frame, out)
        tail = frames[-1]
        self._pending, self._pending_read = tail[-MAX_FRAME_CHARS:], False
        if len(frames) == 1 and first_read:
            self._pending_read = True  # the same frame, still growing: read once already
        elif tail.rstrip().endswith("]"):
            self._read(tail, out)
            self._pending_read = True
        return out

    def flush(self) -> list[Parsed]:
        """End of output: the unterminated last frame, if not read already."""
        out: list[Parsed] = []
        if self._pending and not self._pending_read:
            self._read(self._pending, out)
        self._pending, self._pending_read = "", False
        if self._held is not None:
            out.append(self._held)
            self._held = None
        return out

    def _read(self, frame: str, out: list[Parsed]) -> None:
        if not frame or frame.isspace():
            return
        rec = parse_line(frame, self.rx)
        if rec is None:
            return
        if rec.kind == "log":
            self._logs_since_lock += 1
        elif rec.kind == "bar":
            rec = self._follow(rec)
        if self._held is not None:
            held, self._held = self._held, None
            if rec.kind == "bar":
                held = held._replace(step=rec.step, total=rec.total)
            out.append(held)
        if rec.kind in ("log", "eval") and rec.step is None and self._lock is not None:
            self._held = rec
            return
        out.append(rec)

    def _follow(self, rec: Parsed) -> Parsed:
        lock = self._lock
        if lock is None:
            return self._relock(rec, 0)
        done = lock.total is not None and lock.step >= lock.total
        restarted = rec.step < lock.step or (rec.elapsed_s or 0) + 1 < (lock.elapsed_s or 0)
        if rec.total == lock.total and not restarted:
            self._lock = rec
            return self._shifted(rec)
        if not done:
            return rec._replace(kind="other_bar")
        if rec.total == lock.total:  # the same loop again: the next epoch's bar
            return self._relock(rec, self._offset + lock.step)
        if self._logs_since_lock:  # a new bar after training logged: the final evaluation
            return rec._replace(kind="other_bar")
        return self._relock(rec, 0)  # the finished bar was a set-up loop

    def _relock(self, rec: Parsed, offset: int) -> Parsed:
        self._lock, self._offset, self._logs_since_lock = rec, offset, 0
        return self._shifted(rec)

    def _shifted(self, rec: Parsed) -> Parsed:
        return rec._replace(step=rec.step + self._offset, total=None) if self._offset else rec

