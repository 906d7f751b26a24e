"""HF-style `checkpoint-N` folders, uploaded as each one is complete, for any trainer.

`[trainer] checkpoints = "<folder>"` (`--checkpoints DIR`) names where the trainer saves them
(relative to its output dir, or absolute). The watch lists that folder (one `scandir`, about
once a second) and declares `checkpoint-N` as the non-final artifact `checkpoint-N` once it is
complete: HF Trainer writes `trainer_state.json` last (our trainer `trainer_state.pt`), and a
folder with neither counts once it has stopped changing for `settle_s`. The artifact queue then
uploads it to `artifacts/checkpoint-N/`, where `ctl launch --resume` looks.

An unmodified HF script prints nothing when it saves, so a new folder is also how the agent
knows the run is saving: the phase is `saving` from the folder's appearance until it is complete
(unless the progress file reports phases itself). Without the setting, agent.daemon.saves sees
the same folders by the same rule (`Completion`) for the phase alone, and uploads nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.daemon.progress import ProgressTracker
from agent.protocol import records as p

NAME = re.compile(r"checkpoint-(\d+)\Z")
STATE_FILES = ("trainer_state.json", p.CHECKPOINT_STATE)  # written last by HF Trainer / train.sft


def signature(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime in ns) of a folder: equal twice over settle_s = not changing.
    Symlinked folders inside are not walked (os.walk's default)."""
    files = size = newest = 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            try:
                st = os.stat(os.path.join(root, n))
            except OSError:
                continue
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


COMPLETE, CHANGING, STILL = "complete", "changing", "still"


class Completion:
    """When a checkpoint folder is complete, the one rule for the upload watch and the save watch
    (agent.daemon.saves): its trainer state file is there, or it has not changed for `settle_s`."""

    def __init__(self, settle_s: float):
        self.settle_s = settle_s
        self.pending: dict[str, tuple[tuple, float]] = {}  # key -> (signature, unchanged since)

    def state(self, key: str, path: Path, now: float) -> str:
        """COMPLETE, CHANGING (new, or changed since the last look) or STILL (unchanged, not settled)."""
        if any((path / f).is_file() for f in STATE_FILES):
            self.pending.pop(key, None)
            return COMPLETE
        sig = signature(path)
        seen = self.pending.get(key)
        if seen is None or seen[0] != sig:
            self.pending[key] = (sig, now)
            return CHANGING
        if now - seen[1] >= self.settle_s:
            del self.pending[key]
            return COMPLETE
        return STILL

    def keep_only(self, keys) -> None:
        """Forget folders no longer there (rotated away by save_total_limit before they settled)."""
        for gone in set(self.pending) - set(keys):
            del self.pending[gone]


class CheckpointWatch:
    """Declares complete `checkpoint-N` folders of `folder` into `tracker` (once each)."""

    def __init__(self, folder: Path, tracker: ProgressTracker, settle_s: float = 30.0):
        self.folder, self.tracker, self.settle_s = folder, tracker, settle_s
        self.declared: set[str] = set()
        self.done = Completion(settle_s)

    def folders(self) -> list[Path]:
        """Every checkpoint folder there now (kept out of a final artifact that contains them)."""
        return [self.folder / n for n in self._names()]

    def _names(self) -> list[str]:
        try:
            with os.scandir(self.folder) as it:
                return sorted((e.name for e in it if NAME.match(e.name) and e.is_dir()),
                              key=lambda n: int(NAME.match(n).group(1)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def scan(self, now: float, final: bool = False) -> list[str]:
        """Declare the folders complete now (all remaining ones when `final`: the trainer has ended).
        Returns the names declared by this call."""
        out, names = [], self._names()
        self.done.keep_only(names)
        for name in names:
            if name in self.declared:
                continue
            path = self.folder / name
            if final or self.done.state(name, path, now) == COMPLETE:
                self.done.pending.pop(name, None)
                self.declared.add(name)
                self.tracker.declare(name, f"{path}/", final=False)
                out.append(name)
            else:
                self._saving(now)
        if out and not self.done.pending and self._own_phases() and self.tracker.phase == "saving":
            self.tracker.set_phase("training", now)
        return out

    def _own_phases(self) -> bool:
        return self.tracker.source != p.Heartbeat.SOURCE_TRAINER

    def _saving(self, now: float) -> None:
        if self._own_phases() and self.tracker.phase != "saving":
            self.tracker.set_phase("saving", now)
