"""The adaptive hang deadline: a run is judged by its own pace, not by one fixed timeout.

`Cadence` watches when progress reports arrive (steps, and the evaluation and checkpoint-save
phases with their durations) and publishes a small record in heartbeat.json; `assess` judges a
run from that record alone, so the watcher needs nothing more than it already reads.

- Until a run has shown `min_steps` gaps between reports after its warm-up (the first steps are
  slow: compilation, caches, the first batches), the deadline is the configured timeout.
- Then: hung after clamp(max(k x p95 gap, max_k x the longest gap in the window), floor, timeout).
  The window is a fixed number of recent gaps, so memory is bounded and a run that slows down
  is followed. A gap that spans an evaluation or a save is not a step gap and is left out.
- Evaluation and saving get their own allowances, learned the same way from their observed
  durations (phase_k x p95); before the first one is seen, phase_default x the step deadline
  (capped at phase_cap_s). In those phases a run is hung after deadline + allowance.
- Timestamps that go backwards (a clock stepped back) and steps that do not advance are ignored.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

# The pure judge lives in the protocol (the watcher imports it); re-exported here for the agent.
from agent.protocol.cadence import EVAL, SAVE, Verdict, assess, phase_kind, would_be_hung  # noqa: F401


@dataclass(frozen=True)
class CadenceSettings:
    """How the deadline is learned. Times in seconds."""

    timeout_s: float = 900.0  # the configured hang timeout: the deadline never goes above it
    floor_s: float = 20.0  # nor below this (a hiccup of a fast run is not a hang)
    k: float = 5.0  # x the p95 gap between reports
    max_k: float = 1.5  # x the longest gap in the window: a slow tail the run showed is allowed
    min_steps: int = 5  # gaps after warm-up before the deadline is learned
    warmup_steps: int = 3  # first gaps left out
    window: int = 256
    phase_k: float = 3.0  # x the p95 observed duration of an evaluation / a save
    phase_default: float = 10.0  # x the step deadline, before the phase's first duration is seen
    phase_cap_s: float = 3600.0  # caps that default (not a learned allowance)
    phase_window: int = 32


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of a non-empty collection; None when empty."""
    s = sorted(values)
    if not s:
        return None
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class Cadence:
    """What a run's reports show about its pace; `record()` is what goes into heartbeat.json."""

    def __init__(self, settings: CadenceSettings | None = None):
        self.s = s = settings or CadenceSettings()
        self._gaps: deque[float] = deque(maxlen=s.window)  # seconds between reports
        self._per_step: deque[float] = deque(maxlen=s.window)  # the same, per step (reports may skip steps)
        self._durations = {EVAL: deque(maxlen=s.phase_window), SAVE: deque(maxlen=s.phase_window)}
        self.steps_seen = 0
        self._gaps_seen = 0
        self.last_ts: float | None = None
        self._last_step: int | None = None
        self._phase: str | None = None  # EVAL / SAVE while one runs
        self._phase_start: float | None = None
        self._spans_phase = False
        self.phase_name: str | None = None  # the trainer's phase as it named it, and since when
        self.phase_since: float | None = None

    def step(self, ts: float, step: int | None = None) -> None:
        """A progress report at `ts`. Numbered steps must advance; an unnumbered report counts as one
        step only while no numbered one has been seen (a log dict after a bar is the same step)."""
        if self.last_ts is not None and ts < self.last_ts:
            return
        if step is None and self._last_step is not None:
            return
        if step is not None and self._last_step is not None and step <= self._last_step:
            return
        if self._phase is not None:  # a step ends an evaluation or a save that was not marked over
            self.phase_name, self.phase_since = "training", ts
        self._end_phase(ts)
        if self.last_ts is not None and not self._spans_phase:
            self._gaps_seen += 1
            if self._gaps_seen > self.s.warmup_steps:
                gap = ts - self.last_ts
                self._gaps.append(gap)
                n = step - self._last_step if step is not None and self._last_step is not None else 1
                self._per_step.append(gap / n)
        self.steps_seen += 1
        self.last_ts, self._last_step, self._spans_phase = ts, step, False

    def phase(self, name: str | None, ts: float) -> None:
        """The trainer entered phase `name` at `ts`; entering evaluation or saving starts its clock,
        and any other phase (or a step) stops it."""
        if name == self.phase_name or (self.phase_since is not None and ts < self.phase_since):
            return
        self.phase_name, self.phase_since = name, ts
        kind = phase_kind(name)
        self._end_phase(ts)
        if kind is not None:
            self._phase, self._phase_start = kind, ts
            self._spans_phase = self.last_ts is not None

    def phase_duration(self, name: str, seconds: float) -> None:
        """A duration measured elsewhere (an eval dict's eval_runtime), for a phase not marked live."""
        kind = phase_kind(name)
        if kind is not None and isinstance(seconds, int | float) and 0 <= seconds < math.inf:
            self._durations[kind].append(float(seconds))
            self._spans_phase = self.last_ts is not None

    def _end_phase(self, ts: float) -> None:
        if self._phase is not None and self._phase_start is not None and ts >= self._phase_start:
            self._durations[self._phase].append(ts - self._phase_start)
        self._phase = self._phase_start = None

    def deadline_s(self) -> float:
        """Seconds without a report after which the run is hung (outside evaluation and saving)."""
        s = self.s
        if len(self._gaps) < s.min_steps:
            return s.timeout_s
        learned = max(s.k * percentile(self._gaps, 0.95), s.max_k * max(self._gaps))
        return min(s.timeout_s, max(s.floor_s, learned))

    def allowance_s(self, kind: str, deadline: float) -> float:
        """Extra seconds granted in phase `kind` (EVAL / SAVE) on top of the step deadline."""
        seen = self._durations[kind]
        if not seen:
            return min(self.s.phase_cap_s, self.s.phase_default * deadline)
        return max(deadline, self.s.phase_k * percentile(seen, 0.95))

    def record(self) -> dict:
        """The cadence for heartbeat.json (rounded; None where not known yet)."""
        hung = self.deadline_s()
        r2 = lambda v: None if v is None else round(v, 3)  # noqa: E731
        return {"step_p50_s": r2(percentile(self._per_step, 0.5)), "step_p95_s": r2(percentile(self._per_step, 0.95)),
                "gap_p95_s": r2(percentile(self._gaps, 0.95)), "hung_after_s": r2(hung),
                "eval_allowance_s": r2(self.allowance_s(EVAL, hung)), "save_allowance_s": r2(self.allowance_s(SAVE, hung)),
                "learned": len(self._gaps) >= self.s.min_steps, "steps_seen": self.steps_seen,
                "evals_seen": len(self._durations[EVAL]), "saves_seen": len(self._durations[SAVE]),
                "last_step_ts": self.last_ts, "phase": self.phase_name, "phase_since": self.phase_since}
