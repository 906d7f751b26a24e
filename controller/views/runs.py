"""`ctl runs`: one row per run, with the watcher's state and reason (controller.views.facts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from controller.views.facts import add_instances, finished, outcome, read_facts
from ops.ec2 import Ec2Enricher
from ops.pricing import run_cost
from ops.state import RunFacts, Settings, assess


@dataclass
class RunRow:
    """What `ctl runs` shows for one run."""

    run_id: str
    phase: str | None
    step: int | None
    total_steps: int | None
    loss: float | None
    heartbeat_age_s: float | None  # None once the run finished: its last heartbeat says nothing now
    outcome: str  # running until a marker ends the run, then the terminal state (completed, failed, ...)
    created: float | None
    cost_usd: float | None = None  # the agent's figure, else price table x duration (so far, if running)
    state: str = ""  # the watcher's state (ops.state.assess): healthy, late, agent_silent, interrupted, ...
    reason: str = ""  # the watcher's reason for it


def cost_of(md: p.Metadata | None, err: p.ErrorMarker | None, done: p.CompleteMarker | None,
            finished: bool, now: float) -> float | None:
    """USD: the marker's `cost_usd` when the agent wrote one, else the price table times the run's
    duration (the marker's, else created to marker or to `now` for a run still going)."""
    marker = done or err
    if marker and marker.cost_usd is not None:
        return marker.cost_usd
    if finished and marker is None:
        return None  # unreadable marker: no end time to price
    dur = marker.duration_s if marker and marker.duration_s is not None else None
    if dur is None and md:
        dur = (marker.ts if marker else now) - md.created
    return run_cost(md.instance_type if md else None, dur)


def run_row(rs: RunStore, run_id: str, now: float, settings: Settings = Settings(),
            facts: RunFacts | None = None) -> RunRow:
    """Read one run's records and summarise them; unreadable records show as blanks."""
    f = facts or read_facts(rs, run_id)
    st = assess(f, now, settings)
    md, hb = f.metadata, f.heartbeat
    try:
        pr = rs.read_progress(run_id)
    except p.RecordError:
        pr = None
    done = finished(st)
    phase = (pr.phase if pr and pr.phase else None) or (hb.phase if hb and hb.phase else None) or (md.phase if md else None)
    return RunRow(
        run_id=run_id,
        phase=st.state if done else phase,
        step=pr.step if pr else (hb.last_step if hb else None),
        total_steps=pr.total_steps if pr else None,
        loss=pr.loss if pr else None,
        heartbeat_age_s=round(now - hb.ts, 1) if hb and not done else None,
        outcome=outcome(st),
        created=md.created if md else None,
        cost_usd=cost_of(md, f.error, f.complete, f.has_error or f.has_complete, now),
        state=st.state, reason=st.reason,
    )


def list_rows(rs: RunStore, now: float, limit: int | None = None, settings: Settings = Settings(),
              ec2: Ec2Enricher | None = None) -> list[RunRow]:
    """Rows for the newest `limit` runs (run ids sort by name, so order by creation stamp); the
    instances of unfinished runs are looked up in one batched call per region, as the watcher does."""
    ids = sorted(rs.list_runs(), key=lambda r: r[-15:], reverse=True)
    if limit:
        ids = ids[:limit]
    facts = [read_facts(rs, r) for r in ids]
    add_instances(facts, ec2)
    return [run_row(rs, f.run_id, now, settings, f) for f in facts]


def rows_as_dicts(rows: list[RunRow]) -> list[dict]:
    return [asdict(r) for r in rows]
