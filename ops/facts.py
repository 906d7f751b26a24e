"""Reading a run's facts with as few store requests as a healthy run allows.

A healthy run costs three requests per sweep: one prefix listing of `<run>/_` (which of
`_error`, `_complete`, `_alerts.json` exist), the heartbeat, and the ledger. Metadata is read
once and cached in the ledger; it is read again, with `control/stop`, only when the heartbeat
is missing or stale (`control/stop` also when the run would be hung). Markers are read when they
exist, which happens once per run.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.protocol import records as p
from agent.protocol.frames import fold_frames
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.message import MessageFacts
from ops.state import DEFAULT_HEARTBEAT_S, HUNG, RunFacts, Settings, assess

CACHED = ("created", "phase", "heartbeat_s", "instance_id", "instance_type", "region", "trainer_pid")


@dataclass
class Observed:
    """One run as read this sweep: its facts, its ledger, and metadata to cache in the ledger."""

    facts: RunFacts
    loaded: L.Loaded
    cache: dict | None = None  # new metadata facts to store in the ledger


def _safe(read, run_id):
    try:
        return read(run_id)
    except p.RecordError:
        return None


def metadata_from_cache(run_id: str, cache: dict) -> p.Metadata | None:
    if not cache or cache.get("created") is None:
        return None
    return p.Metadata(run_id=run_id, **{k: v for k, v in cache.items() if k in CACHED and v is not None})


def observe(rs: RunStore, run_id: str, now: float, s: Settings) -> Observed:
    """Read what `assess` needs for `run_id`."""
    names = rs.markers(run_id)
    loaded = L.load(rs, run_id) if p.ALERTS in names else L.Loaded(L.Ledger(run_id), None)
    f = RunFacts(run_id, has_error=p.ERROR in names, has_complete=p.COMPLETE in names)
    if f.has_error:
        f.error = _safe(rs.read_error, run_id)
    if f.has_complete:
        f.complete = _safe(rs.read_complete, run_id)
    if f.has_error or f.has_complete:
        # A marker decides the state on its own; the message reads the rest only if one is sent.
        f.metadata = metadata_from_cache(run_id, loaded.ledger.facts)
        return Observed(f, loaded)
    hb = None
    try:
        hb = f.heartbeat = rs.read_heartbeat(run_id)
    except p.RecordError as exc:
        f.heartbeat_problem = str(exc)
    cached = loaded.ledger.facts
    hb_s = s.heartbeat_s or (hb.heartbeat_s if hb else None) or cached.get("heartbeat_s") or DEFAULT_HEARTBEAT_S
    stale = hb is None or now - hb.ts > hb_s
    obs = Observed(f, loaded)
    if not cached or stale:
        md = _safe(rs.read_metadata, run_id)
        if md is not None:
            fresh = {k: getattr(md, k) for k in CACHED}
            if fresh != cached:
                obs.cache = fresh
        f.metadata = md or metadata_from_cache(run_id, cached)
    else:
        f.metadata = metadata_from_cache(run_id, cached)
    # A stop explains a quiet agent or a stalled trainer: read it then (and only then, it costs a request),
    # so the watcher and `ctl status` never disagree about a run someone stopped.
    if stale or assess(f, now, s).state == HUNG:
        f.stop_requested = rs.stop_requested(run_id)
    return obs


def message_facts(rs: RunStore, f: RunFacts) -> MessageFacts:
    """Everything a message shows; read only when a message is about to be sent."""
    run_id = f.run_id
    md = _safe(rs.read_metadata, run_id) or f.metadata
    mf = MessageFacts(run_id, metadata=md, progress=_safe(rs.read_progress, run_id),
                      error=f.error, complete=f.complete, instance=f.instance,
                      console_url=rs.console_url(run_id), store_url=rs.url)
    if (f.error or f.complete) and rs.store.exists(rs.k(run_id, p.LOSS_CURVE)):
        mf.loss_curve = rs.location(run_id, p.LOSS_CURVE)
    if f.error and f.error.log_tail:
        mf.log_tail = [str(x) for x in f.error.log_tail]
    else:
        latest = rs.read_latest_log(run_id)
        mf.log_tail = fold_frames(latest).splitlines()[-30:] if latest else []
    return mf
