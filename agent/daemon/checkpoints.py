"""HF-style `checkpoint-N` folders, uploaded as each one is complete, for any trainer.

`[trainer] checkpoints = "<folder>"` (`--checkpoints DIR`) names where the trainer saves them
(relative to its output dir, or absolute). The watch lists that folder (one `scandir`, about
once a second) and declares `checkpoint-N` as the non-final artifact `checkpoint-N` once it is
complete: HF Trainer writes `trainer_state.json` last (our trainer `trainer_state.pt`), and a
folder with neither counts once it has stopped changing for `settle_s`. The artifact queue then
uploads it to `artifacts/checkpoint-N/`, where `ctl launch --resume` looks.

An unmodified HF script prints nothing when it saves, so a new folder is also how the agent
knows the run is saving: the phase is `saving` from the folder's appearance until it is complete
(unless the progress file reports phases itself).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agent.daemon.progress import ProgressTracker
from agent.protocol import records as p

NAME = re.compile(r"checkpoint-(\d+)\Z")
STATE_FILES = ("trainer_state.json", p.CHECKPOINT_STATE)  # written last by HF Trainer / train.sft


def _signature(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime in ns) of a folder: equal twice over settle_s = not changing."""
    files = size = newest = 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            try:
                st = os.stat(os.path.join(root, n))
            except OSError:
                continue
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


class CheckpointWatch:
    """Declares complete `checkpoint-N` folders of `folder` into `tracker` (once each)."""

    def __init__(self, folder: Path, tracker: ProgressTracker, settle_s: float = 30.0):
        self.folder, self.tracker, self.settle_s = folder, tracker, settle_s
        self.declared: set[str] = set()
        self._pending: dict[str, tuple[tuple, float]] = {}  # name -> (signature, unchanged since)

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
        for gone in set(self._pending) - set(names):  # rotated away (save_total_limit) before it settled
            del self._pending[gone]
        for name in names:
            if name in self.declared:
                continue
            path = self.folder / name
            if final or any((path / f).is_file() for f in STATE_FILES) or self._settled(name, path, now):
                self._pending.pop(name, None)
                self.declared.add(name)
                self.tracker.declare(name, f"{path}/", final=False)
                out.append(name)
            else:
                self._saving(now)
        if out and not self._pending and self._own_phases() and self.tracker.phase == "saving":
            self.tracker.set_phase("training", now)
        return out

    def _settled(self, name: str, path: Path, now: float) -> bool:
        sig = _signature(path)
        seen = self._pending.get(name)
        if seen is None or seen[0] != sig:
            self._pending[name] = (sig, now)
            return False
        return now - seen[1] >= self.settle_s

    def _own_phases(self) -> bool:
        return self.tracker.source != p.Heartbeat.SOURCE_TRAINER

    def _saving(self, now: float) -> None:
        if self._own_phases() and self.tracker.phase != "saving":
            self.tracker.set_phase("saving", now)
