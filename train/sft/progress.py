"""The trainer's half of the agent contract: JSON lines appended to $TRAINCTL_PROGRESS_FILE.

One object per line, flushed and fsynced, so the agent (which tails the file) never reads half a
line after a crash. Only rank 0 of a distributed run writes. Without the env var this is a no-op
and the same trainer runs fine by hand.
"""

from __future__ import annotations

import json
import os
import time

PHASES = ("setup", "staging", "preparing_data", "loading_model", "training", "evaluating", "saving")


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def emit(**fields) -> None:
    """Append one progress object (adds `ts`). A diverged loss is written as the bare token NaN
    (Python's json reads it back as float nan), which the agent's nan_loss classifier looks for."""
    path = os.environ.get("TRAINCTL_PROGRESS_FILE")
    if not path or not _is_rank0():
        return
    record = {**fields, "ts": round(time.time(), 3)}
    line = json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def phase(name: str) -> None:
    """Declare the phase the trainer is in (one of PHASES)."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}")
    emit(phase=name)


def step(step: int, total_steps: int, epoch: float, loss: float, lr: float, tokens_per_s: float) -> None:
    emit(step=step, total_steps=total_steps, epoch=round(epoch, 4), loss=loss, lr=lr,
         tokens_per_s=round(tokens_per_s, 1))


def artifact(name: str, path: str, final: bool) -> None:
    """Declare an artifact (path relative to the output dir) that now exists on disk, complete."""
    emit(artifact=name, path=path, final=final)
