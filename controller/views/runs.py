"""`ctl runs`: one row per run, computed from what the store holds (pure once facts are read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.pricing import run_cost


@dataclass
class RunRow:
    """What `ctl runs` shows for one run."""

    run_id: str
    phase: str | None
    step: int | None
    total_steps: int | None
    loss: float | None
    heartbeat_age_s: float | None
    outcome: str  # completed | failed | running | unknown | corrupt
    created: float | None
    cost_usd: float | None = None  # the agent's figure, else price table x duration (so far, if running)


def outcome_of(has_error: bool, has_complete: bool, has_metadata: bool) -> str:
    """The run's outcome from its markers; both markers means a corrupt run."""
    if has_error and has_complete:
        return "corrupt"
    if has_complete:
        return "completed"
    if has_error:
        return "failed"
    return "running" if has_metadata else "unknown"


def _safe(fn, run_id):
    try:
        return fn(run_id)
    except p.RecordError:
        return None


def _marker(read, run_id) -> tuple[bool, p.ErrorMarker | p.CompleteMarker | None]:
    """(exists, record): an unreadable marker still exists."""
    try:
        rec = read(run_id)
    except p.RecordError:
        return True, None
    return rec is not None, rec


def cost_of(md: p.Metadata | None, err: p.ErrorMarker | None, done: p.CompleteMarker | None,
            finished: bool, now: float) -> float | None:
    """USD: `_complete.cost_usd` when the agent wrote it, else the price table times the run's
    duration (the marker's, else created to marker or to `now` for a run still going)."""
    if done and done.cost_usd is not None:
        return done.cost_usd
    marker = done or err
    if finished and marker is None:
        return None  # unreadable marker: no end time to price
    dur = marker.duration_s if marker and marker.duration_s is not None else None
    if dur is None and md:
        dur = (marker.ts if marker else now) - md.created
    return run_cost(md.instance_type if md else None, dur)


def run_row(rs: RunStore, run_id: str, now: float) -> RunRow:
    """Read one run's records and summarise them; unreadable records show as blanks."""
    md = _safe(rs.read_metadata, run_id)
    hb = _safe(rs.read_heartbeat, run_id)
    pr = _safe(rs.read_progress, run_id)
    has_err, err = _marker(rs.read_error, run_id)
    has_done, done = _marker(rs.read_complete, run_id)
    phase = (pr.phase if pr and pr.phase else None) or (hb.phase if hb and hb.phase else None) or (md.phase if md else None)
    outcome = outcome_of(has_err, has_done, md is not None)
    if outcome in ("completed", "failed"):
        phase = outcome
    return RunRow(
        run_id=run_id,
        phase=phase,
        step=pr.step if pr else (hb.last_step if hb else None),
        total_steps=pr.total_steps if pr else None,
        loss=pr.loss if pr else None,
        heartbeat_age_s=round(now - hb.ts, 1) if hb else None,
        outcome=outcome,
        created=md.created if md else None,
        cost_usd=cost_of(md, err, done, has_err or has_done, now),
    )


def list_rows(rs: RunStore, now: float, limit: int | None = None) -> list[RunRow]:
    """Rows for the newest `limit` runs (run ids sort by name, so order by creation stamp)."""
    ids = sorted(rs.list_runs(), key=lambda r: r[-15:], reverse=True)
    if limit:
        ids = ids[:limit]
    return [run_row(rs, r, now) for r in ids]


def rows_as_dicts(rows: list[RunRow]) -> list[dict]:
    return [asdict(r) for r in rows]
