"""Wakes the agent's loop when the spool or progress file changes, without paying per write.

An inotify watch delivers one event per `write()` the trainer makes, and a chatty trainer makes
tens of thousands a second; decoding each in Python would cost more CPU than the shipping itself.
So the watch is armed only while the agent is idle (everything shipped): the first change wakes
the loop at once, the watch is disarmed while there is a backlog, and the loop's polling tick
covers the rest. Without inotify (limits, exotic filesystems) polling alone still works.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger("trainctl.agent")


class FileWatch:
    """A watchdog observer on one folder that sets `wake` when one of `paths` changes."""

    def __init__(self, folder: Path, paths: list[Path], wake: threading.Event):
        self.folder, self.wake = str(folder), wake
        self._paths = {str(p) for p in paths}
        self._watch = None
        self._observer = None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            outer = self

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, event):
                    if event.src_path in outer._paths:
                        outer.wake.set()

            # watchdog warns when an event races an unschedule; that is expected here.
            logging.getLogger("watchdog").setLevel(logging.ERROR)
            self._handler = _Handler()
            self._observer = Observer()
            self._observer.start()
        except Exception as exc:  # no inotify, no watchdog: the polling tick still works
            log.warning("file watch unavailable (%s); polling only", exc)
            self._observer = None

    def arm(self) -> None:
        """Start delivering change events (call when idle)."""
        if self._observer is None or self._watch is not None:
            return
        try:
            self._watch = self._observer.schedule(self._handler, self.folder, recursive=False)
        except Exception as exc:
            log.warning("file watch failed (%s); polling only", exc)
            self.close()

    def disarm(self) -> None:
        """Stop delivering events (call while there is a backlog being shipped anyway)."""
        if self._observer is not None and self._watch is not None:
            try:
                self._observer.unschedule(self._watch)
            except (KeyError, OSError):
                pass
        self._watch = None

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        self._observer = self._watch = None
