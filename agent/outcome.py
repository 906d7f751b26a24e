"""How a run ended, as the `_error` / `_complete` records and the metadata phase.

Pure functions of what the agent observed, so the decision "complete or error, and why" can be
tested without a trainer or a store.
"""

from __future__ import annotations

import time

from agent import protocol as p
from agent.classify import REMEDIATION, classify
from agent.redact import redact
from agent.trainer import ExitStatus

PHASE_OF_CAUSE = {"stopped_by_user": "stopped", "interrupted": "interrupted"}


def error_marker(status: ExitStatus, facts: dict, tail: list[str], *, phase: str | None, duration_s: float | None,
                 last_step: int | None, last_loss: float | None, summary: str | None = None,
                 cause: str | None = None, tail_lines: int = 50) -> p.ErrorMarker:
    """The `_error` record: classified cause (unless given), remediation, redacted last lines."""
    if cause is None:
        cause, remediation, found = classify(tail, status.exit_code, status.signal, facts)
        summary = summary or found
    else:
        remediation = REMEDIATION[cause]
    return p.ErrorMarker(
        ts=time.time(), cause=cause, remediation=remediation, summary=redact(summary or ""),
        exit_code=status.exit_code, signal=status.signal, phase=phase, duration_s=duration_s,
        last_step=last_step, last_loss=_json_float(last_loss), log_tail=[redact(x) for x in tail[-tail_lines:]])


def complete_marker(duration_s: float, final_metrics: dict, artifacts: list[dict]) -> p.CompleteMarker:
    """The `_complete` record; call only once every final artifact is verified in the store."""
    return p.CompleteMarker(ts=time.time(), duration_s=duration_s, final_metrics=final_metrics, artifacts=artifacts)


def terminal_phase(marker: p.ErrorMarker | p.CompleteMarker) -> str:
    """The metadata phase that goes with a marker."""
    if isinstance(marker, p.CompleteMarker):
        return "completed"
    return PHASE_OF_CAUSE.get(marker.cause, "failed")


def _json_float(v):
    if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")):
        return str(v)
    return v
