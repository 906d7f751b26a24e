"""An unmodified HF script's saves, seen with no setting: the `saving` phase, never an upload.

When `[trainer] checkpoints` is not set (agent.daemon.checkpoints then uploads nothing), the
agent still looks for HF-style `checkpoint-N` folders under the trainer's output dir
(TRAINCTL_OUTPUT_DIR) and its working directory, at depth 1 or 2 (`<root>/checkpoint-N`,
`<root>/<dir>/checkpoint-N`: HF's `output_dir` is usually a folder of the working directory). A
folder that appears or is still changing, judged by the upload watch's own rule (`Completion`:
no trainer state file yet, or files still growing), puts the run in the `saving` phase, so the
published cadence grants its save allowance and a long save is not a hang; once every such folder
is complete the phase is `training` again.

The scan stays cheap and bounded: at most every `save_scan_s`, symlinks never followed, hidden
folders (.git, .venv) skipped, at most MAX_ENTRIES names read per folder and MAX_SUBDIRS folders
looked into per root. A folder already still for `settle_s` when first seen (an earlier run's)
is complete at once, so old checkpoints in the working directory never read as a save.

Phases from the sources do not fight: the progress file's phases win (the watch then does
nothing), and the watch claims `saving` only when a folder appears or changes, so the output's
`training` (a log line after the save) is not taken back on every scan of a folder that stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from agent.daemon.checkpoints import CHANGING, COMPLETE, NAME, Completion
from agent.daemon.progress import ProgressTracker
from agent.protocol import records as p

MAX_ENTRIES = 2000  # names read from one folder per scan (a data folder of a million files costs no more)
MAX_SUBDIRS = 200  # folders of a root looked into for checkpoint-N per scan
SAVING, TRAINING = "saving", "training"


def _dirs(folder: str) -> Iterable[os.DirEntry]:
    """Sub-folders of `folder` (never through a symlink), at most MAX_ENTRIES names read."""
    try:
        with os.scandir(folder) as it:
            for i, e in enumerate(it):
                if i >= MAX_ENTRIES:
                    return
                try:
                    if e.is_dir(follow_symlinks=False):
                        yield e
                except OSError:
                    continue
    except OSError:  # gone, not a folder, not readable
        return


def find_checkpoints(roots: Iterable[Path]) -> dict[str, Path]:
    """`checkpoint-N` folders at depth 1 or 2 under `roots`, by their path (roots deduplicated)."""
    out: dict[str, Path] = {}
    for root in dict.fromkeys(os.path.realpath(r) for r in roots):
        looked = 0
        for e in _dirs(root):
            if NAME.match(e.name):
                out[e.path] = Path(e.path)
            elif not e.name.startswith(".") and looked < MAX_SUBDIRS:
                looked += 1
                out.update({s.path: Path(s.path) for s in _dirs(e.path) if NAME.match(s.name)})
    return out


def trainer_cwd(pid: int | None) -> Path:
    """The trainer's working directory (it may have changed it); the agent's own, which it
    inherited, when the process cannot be asked."""
    try:
        return Path(psutil.Process(pid).cwd()) if pid else Path.cwd()
    except (psutil.Error, OSError):
        return Path.cwd()


class SaveWatch:
    """Sets the tracker's phase from `checkpoint-N` folders under `roots()`; declares nothing."""

    def __init__(self, roots: Callable[[], list[Path]], tracker: ProgressTracker, settle_s: float = 30.0):
        self.roots, self.tracker = roots, tracker
        self.done = Completion(settle_s)
        self.complete: set[str] = set()  # folders already complete: never looked into again
        self._claimed = False  # the phase is `saving` because of this watch

    def scan(self, now: float) -> None:
        """One bounded look; `now` is wall-clock time (folders' mtimes are compared with it)."""
        found = find_checkpoints(self.roots())
        self.complete &= set(found)
        self.done.keep_only(found)
        moving = False
        for key, path in found.items():
            if key in self.complete:
                continue
            first = key not in self.done.pending
            state = self.done.state(key, path, now)
            if state == CHANGING and first and self._old(key, now):
                state = COMPLETE  # still since before settle_s: an earlier save, not one happening now
            if state == COMPLETE:
                self.done.pending.pop(key, None)
                self.complete.add(key)
            moving |= state == CHANGING
        if self.tracker.source == p.Heartbeat.SOURCE_TRAINER:
            return  # the progress file reports its own phases
        if moving:
            self._claimed = True
            if self.tracker.phase != SAVING:
                self.tracker.set_phase(SAVING, now)
        elif not self.done.pending and self._claimed:
            self._claimed = False
            if self.tracker.phase == SAVING:
                self.tracker.set_phase(TRAINING, now)

    def _old(self, key: str, now: float) -> bool:
        (files, _size, newest_ns), _since = self.done.pending[key]
        try:
            newest = newest_ns / 1e9 if files else os.lstat(key).st_mtime
        except OSError:
            return False  # gone meanwhile: the next scan forgets it
        return now - newest >= self.done.settle_s
