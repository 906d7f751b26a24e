"""Judging a run's published cadence (heartbeat.json's `cadence`): is it hung?

The pure half of the adaptive hang deadline (agent.daemon.cadence learns the record on the box):
the watcher, the views and the agent all judge a record with `assess`, so they cannot disagree.
The record's figures: `hung_after_s` (seconds without a step after which the run is hung),
`eval_allowance_s` / `save_allowance_s` (extra seconds in those phases), `step_p50_s`,
`last_step_ts`, `phase` and `phase_since` (when the phase began), all box-clock seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EVAL, SAVE = "evaluating", "saving"
_PHASE_ALIASES = {"evaluating": EVAL, "eval": EVAL, "evaluation": EVAL, "saving": SAVE, "save": SAVE}


def phase_kind(phase: str | None) -> str | None:
    """EVAL, SAVE, or None for every other phase (training, set-up, unknown)."""
    return _PHASE_ALIASES.get(phase or "")


@dataclass(frozen=True)
class Verdict:
    """`assess`'s answer, with the figures to show a human."""

    hung: bool
    idle_s: float | None  # since the last step
    threshold_s: float | None
    why: str
    phase: str | None = None  # EVAL / SAVE when the threshold includes that phase's allowance
    allowance_s: float | None = None  # that allowance


def _secs(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def assess(record: dict | None, now: float, last_step_ts: float | None = None, phase: str | None = None,
           phase_since: float | None = None, slack_s: float = 0.0) -> Verdict:
    """Is the run hung, judged from its published cadence `record` alone?

    `now` is the time the facts were true on the box: the heartbeat's own `ts` when judging a
    heartbeat (judged by the watcher's clock, the heartbeat's age would count as idleness and the
    box's clock skew would too). The last step, the phase and when it began come from the record
    unless given. Idleness counts from the later of the last step and the phase's start, so the
    first step after an evaluation is granted a step's deadline. `slack_s` is extra tolerance."""
    record = record or {}
    hung_after = _secs(record.get("hung_after_s"))
    if last_step_ts is None:
        last_step_ts = _secs(record.get("last_step_ts"))
    if phase is None:
        phase, phase_since = record.get("phase"), phase_since if phase_since is not None else record.get("phase_since")
    if hung_after is None:
        return Verdict(False, None, None, "no cadence published")
    if last_step_ts is None:
        return Verdict(False, None, None, "no step yet")
    since = _secs(phase_since)
    idle = now - (max(last_step_ts, since) if since is not None else last_step_ts)
    kind = phase_kind(phase)
    extra = _secs(record.get("eval_allowance_s" if kind == EVAL else "save_allowance_s")) if kind else None
    threshold = hung_after + (extra or 0.0)
    p50 = _secs(record.get("step_p50_s"))
    pace = f"steps every {p50:.3g}s, " if p50 is not None else ""
    where = f" ({kind}: +{extra:.0f}s allowed)" if extra else ""
    hung = idle > threshold + slack_s
    said = f"no progress for {idle:.0f}s" if hung else f"last progress {idle:.0f}s ago"
    return Verdict(hung, idle, threshold, f"{said}; {pace}hung after {threshold:.0f}s{where}", kind if extra else None,
                   extra)


def would_be_hung(record: dict | None, now: float, last_step_ts: float | None = None, phase: str | None = None,
                  phase_since: float | None = None) -> bool:
    """`assess(...).hung`."""
    return assess(record, now, last_step_ts, phase, phase_since).hung
