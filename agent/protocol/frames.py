"""Carriage-return updates folded to what a terminal shows, for the views people read.

A tqdm bar redraws itself with `\\r` and never ends its line until it closes, so joined as written
it is one long line of every frame. training_log_latest.txt, `ctl tail` and the alert's excerpt
show instead the last frame of each line: `a\\rb\\rc\\n` reads `c\\n`. The shipped chunks stay byte-
exact; this is only for display. Works on str or bytes alike (`\\r` and `\\n` are single bytes in
UTF-8, so folding bytes never splits a character).

The last frame *with text in it* is kept: a frame of only spaces is how tqdm wipes its bar before
printing a message, and `\\r\\n` line ends leave an empty frame, neither of which should hide the
line. Each output line keeps its `\\n`.
"""

from __future__ import annotations

from typing import AnyStr


def _seps(text: AnyStr) -> tuple[AnyStr, AnyStr]:
    return (b"\r", b"\n") if isinstance(text, bytes) else ("\r", "\n")


def last_frame(line: AnyStr) -> AnyStr:
    """The frame of one line (no `\\n` in it) a reader should see: the last with non-blank text,
    else the last one."""
    cr, _ = _seps(line)
    if cr not in line:
        return line
    frames = line.split(cr)
    for frame in reversed(frames):
        if frame.strip():
            return frame
    return frames[-1]


def fold_frames(text: AnyStr) -> AnyStr:
    """`text` with every line reduced to its last frame; an unterminated last line is folded too."""
    cr, nl = _seps(text)
    if cr not in text:
        return text
    return nl.join(last_frame(line) for line in text.split(nl))


class FrameFolder:
    """`fold_frames` for a stream: feed chunks in any split, get back the folded complete lines.

    Memory is bounded by one frame: of the unfinished line only its latest frame with text and the
    frame being written are kept. `pending()` shows the unfinished line as a terminal would now
    (a live bar's latest frame); `flush()` hands it over at the end of the stream."""

    def __init__(self, binary: bool = False):
        self._empty = b"" if binary else ""
        self._shown = self._empty  # latest frame with text in the unfinished line
        self._current = self._empty  # the frame being written

    def feed(self, chunk: AnyStr) -> AnyStr:
        """The lines `chunk` completes, folded, each with its `\\n`; empty if it completes none."""
        cr, nl = _seps(chunk)
        out = []
        lines = chunk.split(nl)
        for i, piece in enumerate(lines):
            if cr in piece:
                frames = piece.split(cr)
                self._take(self._current + frames[0])
                for frame in frames[1:-1]:
                    self._take(frame)
                self._current = frames[-1]
            else:
                self._current += piece
            if i < len(lines) - 1:  # this piece ended at a newline
                out.append(self._line() + nl)
        return self._empty.join(out)

    def pending(self) -> AnyStr:
        """The unfinished line's frame a reader should see now (no newline)."""
        return self._current if self._current.strip() or not self._shown else self._shown

    def flush(self) -> AnyStr:
        """End of stream: the unfinished line, folded, without a newline (empty if none)."""
        return self._line()

    def _take(self, frame: AnyStr) -> None:
        if frame.strip():
            self._shown = frame

    def _line(self) -> AnyStr:
        line = self.pending()
        self._shown = self._current = self._empty
        return line
