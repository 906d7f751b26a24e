"""Experiment tracking from our trainer, as HF's `report_to` does: `[train] report_to = ["tensorboard"]`.

TensorBoard event files go to `<output_dir>/tensorboard/` (the run id as the run's folder name), so
a team's `tensorboard --logdir` shows our runs beside theirs, and the folder is declared as an
artifact at the end so it lands in the run store too. The package is the optional extra
`trainctl[tracking]`; when it is missing the run says so in one line at start and trains on
untracked, rather than crashing later. Only rank 0 writes. W&B is not offered: its client is a
20 MB wheel (plus its own service binary and dependencies), too heavy for `make install`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FOLDER = "tensorboard"
_writers: list = []  # the open writers of this process (rank 0), fed by log()


def start(report_to: list[str], out: Path) -> list[str]:
    """Open a writer per configured backend; returns the backends that are really writing."""
    close()
    if os.environ.get("RANK", "0") != "0":
        return []
    started = []
    for name in report_to:
        if name == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("report_to: tensorboard skipped, the tensorboard package is not installed "
                      "(pip install 'trainctl[tracking]')", file=sys.stderr, flush=True)
                continue
            run = os.environ.get("TRAINCTL_RUN_ID") or "run"
            _writers.append(SummaryWriter(log_dir=str(out / FOLDER / run)))
            started.append(name)
    if started:
        print(f"report_to: writing {', '.join(started)} to {out / FOLDER}", flush=True)
    return started


def log(step: int, **metrics: float | None) -> None:
    """Scalars at `step` (`loss`, `learning_rate`, `eval_loss`, ...) to every open writer; None is skipped."""
    for writer in _writers:
        for key, value in metrics.items():
            if value is not None:
                writer.add_scalar(_tag(key), value, step)
        writer.flush()  # a run that dies still leaves what it logged on disk


def close() -> bool:
    """Flush and close every writer; True when something was written (the folder is worth declaring)."""
    wrote = bool(_writers)
    while _writers:
        _writers.pop().close()
    return wrote


def _tag(key: str) -> str:
    """HF's tag names: `train/loss`, `train/learning_rate`, `eval/loss`."""
    return f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
