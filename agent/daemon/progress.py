"""The run's progress: read from the trainer's progress file (JSON lines), or from its output.

The contract (docs/design.md, "The progress file"): `{"phase": ...}`, `{"step", "total_steps", "epoch", "loss", "lr",
"tokens_per_s"}`, `{"eval_loss", "eval_at_step"}` and `{"artifact": name, "path": rel, "final": bool}`. Lines that
are not JSON objects are skipped (counted in `bad_lines`), a half-written last line waits for its newline.
The whole file is re-read on agent restart: it is small, and that rebuilds the loss history.

A trainer that writes no progress file (an unmodified HF script) is read from its output instead
(agent.daemon.outputprogress calls `output_record`); the file wins as soon as it has a step
record, and what the output gave is then dropped. Every step and phase also feeds the run's
`Cadence` (agent.daemon.cadence), whose record the heartbeat publishes. History holds the steps
that carry a loss: the in-between steps of a trainer logging every N steps are progress, not points.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from agent.daemon.cadence import EVAL, Cadence
from agent.daemon.outputparse import Parsed
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

    def __init__(self, path: Path, cadence: Cadence | None = None):
        self.path = path
        self.cadence = cadence or Cadence()
        self.source: str | None = None  # Heartbeat.SOURCE_TRAINER / SOURCE_OUTPUT once a step was seen
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

    def read_new(self, now: float | None = None, live: bool = True) -> int:
        """Consume lines appended since the last call; returns how many records were read. Records
        read on an agent restart (`live=False`) feed the cadence only when they carry their own `ts`."""
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
                n += self._apply(raw, now or time.time(), live)
        return n

    def _apply(self, raw: bytes, now: float, live: bool = True) -> int:
        try:
            rec = json.loads(raw)
        except ValueError:
            self.bad_lines += 1
            return 0
        if not isinstance(rec, dict):
            self.bad_lines += 1
            return 0
        timed = isinstance(rec.get("ts"), int | float)
        ts, pace = (rec["ts"] if timed else now), timed or live
        if isinstance(rec.get("phase"), str):
            self.set_phase(rec["phase"], ts, pace)
        if isinstance(rec.get("artifact"), str) and isinstance(rec.get("path"), str):
            self.declare(rec["artifact"], rec["path"], bool(rec.get("final")))
        if isinstance(rec.get("eval_loss"), int | float) and "step" not in rec:
            self.metrics["eval_loss"] = rec["eval_loss"]
            self._mark_eval(rec["eval_loss"])
            self.changed = True
        if "step" in rec:
            if self.source != p.Heartbeat.SOURCE_TRAINER:
                self._take_over()
            self._step({k: rec[k] for k in _METRICS if k in rec}, ts, pace)
        return 1

    def _take_over(self) -> None:
        """The progress file has steps: it is the source from now on, and the output's guesses go."""
        if self.source == p.Heartbeat.SOURCE_OUTPUT:
            self.metrics, self.history = {}, []
        self.source = p.Heartbeat.SOURCE_TRAINER

    def _step(self, fields: dict, ts: float, pace: bool = True) -> None:
        self.metrics.update(fields)
        self.last_progress_ts = ts
        self.changed = True
        if pace:
            self.cadence.step(ts, fields.get("step") if isinstance(fields.get("step"), int) else None)
        if fields.get("loss") is None:
            return  # a step between logs: progress, not a point of the loss curve
        self.history.append({"step": fields.get("step", self.metrics.get("step")), "loss": fields["loss"],
                             "lr": fields.get("lr"), "epoch": fields.get("epoch"), "ts": ts,
                             "tokens_per_s": fields.get("tokens_per_s")})
        if len(self.history) > HISTORY_MAX:  # keep the curve's shape, halve its resolution
            self.history = self.history[::2]

    def _mark_eval(self, value) -> None:
        """An evaluation's loss goes on the curve's latest point (`eval_loss`), so history.json
        carries the eval curve too (the loss-curve plot reads it) without points of its own."""
        if self.history:
            self.history[-1]["eval_loss"] = value

    def set_phase(self, name: str, ts: float, pace: bool = True) -> None:
        """The trainer is in phase `name` since `ts` (from its file, its output, or a checkpoint folder)."""
        if name == self.phase:
            return
        self.phase = name
        self.phase_changed = self.changed = True
        if pace:
            self.cadence.phase(name, ts)

    def declare(self, name: str, path: str, final: bool) -> bool:
        """An artifact is ready. A non-final one already declared under the same name is not
        declared again (the callback and the checkpoint watch may both see `checkpoint-N`)."""
        if not final and any(d.name == name and not d.final for d in self.declared):
            return False
        self.declared.append(Declared(name, path, final))
        return True

    def output_record(self, rec: Parsed, ts: float, live: bool = True) -> None:
        """A record parsed from the trainer's output; ignored once the progress file has steps."""
        if self.source == p.Heartbeat.SOURCE_TRAINER:
            return
        if rec.kind in ("log", "regex", "bar"):
            self.source = p.Heartbeat.SOURCE_OUTPUT
            fields = {k: v for k, v in (("step", rec.step), ("total_steps", rec.total), ("loss", rec.loss),
                                        ("lr", rec.lr), ("epoch", rec.epoch)) if v is not None}
            if self.phase != "training":
                self.set_phase("training", ts, live)
            self._step(fields, ts, live)
            if rec.eval_loss is not None:
                self.metrics["eval_loss"] = rec.eval_loss
                self._mark_eval(rec.eval_loss)
        elif rec.kind == "other_bar" and self.source is not None and rec.total and rec.step < rec.total:
            self.set_phase(EVAL, ts, live)  # another bar while training: HF's evaluation loop
        elif rec.kind == "eval":
            self.metrics["eval_loss"] = rec.eval_loss
            self._mark_eval(rec.eval_loss)
            if self.phase == EVAL:
                self.set_phase("training", ts, live)
            elif rec.runtime_s is not None and live:
                self.cadence.phase_duration(EVAL, rec.runtime_s)  # no bar was seen: the dict says how long
            self.changed = True
        elif rec.kind == "summary":
            self.metrics.update({k: v for k, v in (("train_runtime_s", rec.runtime_s), ("train_loss", rec.loss))
                                 if v is not None})
            self.changed = True

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
                          tokens_per_s=m.get("tokens_per_s"), eta_s=self.eta_s(), phase=self.phase,
                          eval_loss=finite_or_str(m.get("eval_loss")))

    def cadence_record(self) -> dict | None:
        """The heartbeat's `cadence`: None until the run's pace is learned."""
        rec = self.cadence.record()
        return rec if rec["learned"] else None

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
