"""Reads the trainer's progress file (JSON lines) incrementally: phase, step metrics, artifacts.

The contract (docs/design.md, "The progress file"): `{"phase": ...}`, `{"step", "total_steps", "epoch", "loss", "lr",
"tokens_per_s"}` and `{"artifact": name, "path": rel, "final": bool}`. Lines that are not JSON
objects are skipped (counted in `bad_lines`), a half-written last line waits for its newline.
The whole file is re-read on agent restart: it is small, and that rebuilds the loss history.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from agent.protocol import records as p

_METRICS = ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s")
HISTORY_MAX = 20000
ETA_WINDOW = 20


@dataclass
class Declared:
    """An artifact the trainer says is ready."""

    name: str
    path: str
    final: bool


class ProgressTracker:
    """State built from the progress file so far."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._buf = b""
        self.phase: str | None = None
        self.metrics: dict = {}
        self.last_progress_ts: float | None = None
        self.history: list[dict] = []
        self.declared: list[Declared] = []
        self.bad_lines = 0
        self.changed = False
        self.phase_changed = False

    def read_new(self, now: float | None = None) -> int:
        """Consume lines appended since the last call; returns how many records were read."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        if not data:
            return 0
        self.offset += len(data)
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        n = 0
        for raw in lines:
            if raw.strip():
                n += self._apply(raw, now or time.time())
        return n

    def _apply(self, raw: bytes, now: float) -> int:
        try:
            rec = json.loads(raw)
        except ValueError:
            self.bad_lines += 1
            return 0
        if not isinstance(rec, dict):
            self.bad_lines += 1
            return 0
        ts = rec.get("ts") if isinstance(rec.get("ts"), int | float) else now
        if isinstance(rec.get("phase"), str) and rec["phase"] != self.phase:
            self.phase = rec["phase"]
            self.phase_changed = self.changed = True
        if isinstance(rec.get("artifact"), str) and isinstance(rec.get("path"), str):
            self.declared.append(Declared(rec["artifact"], rec["path"], bool(rec.get("final"))))
        if "step" in rec:
            self.metrics.update({k: rec[k] for k in _METRICS if k in rec})
            self.last_progress_ts = ts
            self.changed = True
            point = {"step": rec.get("step"), "loss": rec.get("loss"), "lr": rec.get("lr"),
                     "epoch": rec.get("epoch"), "ts": ts}
            self.history.append(point)
            if len(self.history) > HISTORY_MAX:  # keep the curve's shape, halve its resolution
                self.history = self.history[::2]
        return 1

    @property
    def last_step(self) -> int | None:
        return self.metrics.get("step")

    @property
    def last_loss(self) -> float | None:
        loss = self.metrics.get("loss")
        return float(loss) if isinstance(loss, int | float) else None

    def eta_s(self) -> float | None:
        """Seconds to `total_steps` at the pace of the last few reported steps."""
        total, step = self.metrics.get("total_steps"), self.metrics.get("step")
        pts = [h for h in self.history[-ETA_WINDOW:] if isinstance(h.get("step"), int | float)]
        if not isinstance(total, int | float) or not isinstance(step, int | float) or len(pts) < 2:
            return None
        dsteps, dt = pts[-1]["step"] - pts[0]["step"], pts[-1]["ts"] - pts[0]["ts"]
        if dsteps <= 0 or dt <= 0:
            return None
        return max(0.0, (total - step) * dt / dsteps)

    def record(self, now: float) -> p.Progress:
        """The `progress.json` record for the current state."""
        m = self.metrics
        return p.Progress(ts=self.last_progress_ts or now, step=m.get("step"), total_steps=m.get("total_steps"),
                          epoch=m.get("epoch"), loss=finite_or_str(m.get("loss")), lr=m.get("lr"),
                          tokens_per_s=m.get("tokens_per_s"), eta_s=self.eta_s(), phase=self.phase)

    def history_points(self) -> list[dict]:
        return [{**h, "loss": finite_or_str(h.get("loss"))} for h in self.history]

    def final_metrics(self) -> dict:
        out = {k: finite_or_str(v) for k, v in self.metrics.items()}
        out["history_points"] = len(self.history)
        return out


def finite_or_str(v):
    """NaN/inf as a string (JSON has none), so the fact stays visible without writing invalid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
