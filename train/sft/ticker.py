"""Progress display for long loops: a rich live line on a terminal, a plain log line every few
seconds otherwise (the agent ships stdout/stderr as the run's log, where redraws are noise)."""

from __future__ import annotations

import sys
import threading
import time


class Ticker:
    """Counts named quantities and shows them with rates; use as a context manager."""

    def __init__(self, label: str, enabled: bool = True, every_s: float = 10.0, stream=None):
        self.label = label
        self.enabled = enabled
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.counts: dict[str, int] = {}
        self._start = self._last = 0.0
        self._live = None
        self._lock = threading.Lock()  # ticked from the prefetch thread and the main thread

    def __enter__(self):
        self._start = self._last = time.monotonic()
        if self.enabled and self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._text(), console=Console(file=self.stream), refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
        if self.enabled and exc[0] is None:
            print(self._text(final=True), file=self.stream, flush=True)
        return False

    def tick(self, **amounts: int) -> None:
        with self._lock:
            for k, v in amounts.items():
                self.counts[k] = self.counts.get(k, 0) + v
            if self.enabled:
                self._show()

    def _show(self) -> None:
        now = time.monotonic()
        if self._live is not None:
            if now - self._last > 0.25:
                self._live.update(self._text())
                self._last = now
        elif now - self._last >= self.every_s:
            print(self._text(), file=self.stream, flush=True)
            self._last = now

    def _text(self, final: bool = False) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        parts = [f"{k} {v:,} ({v / elapsed:,.0f}/s)" for k, v in self.counts.items()]
        return f"{self.label}{' done' if final else ''}: " + ", ".join(parts) + f" in {elapsed:.1f}s"
