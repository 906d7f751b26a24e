"""The run's state for `ctl runs`, `ctl status` and `ctl tail`: the watcher's `assess`, nothing else.

The views read every record `assess` may look at (they are not on the watcher's per-sweep
request budget, see ops/facts.py), ask EC2 about the instance exactly when the watcher would
(a run with no marker, or an interrupted one: was it spot?), and judge it with the watcher's
settings, taken from the same TRAINCTL_* variables the watcher's Lambda reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.config import settings_from_env
from ops.ec2 import Ec2Enricher
from ops.state import (
    AGENT_SILENT,
    COMPLETED,
    CORRUPT,
    FAILED,
    HUNG,
    INSTANCE_GONE,
    INTERRUPTED,
    STOPPED_BY_USER,
    TERMINAL_STATES,
    InstanceInfo,
    RunFacts,
    RunState,
    Settings,
    assess,
)

# `ctl tail`'s exit code for each state it stops on; the others (launching, healthy, late) follow on.
TAIL_EXIT = {COMPLETED: 0, FAILED: 1, STOPPED_BY_USER: 1, INTERRUPTED: 1, CORRUPT: 1,
             AGENT_SILENT: 3, HUNG: 3, INSTANCE_GONE: 3}


def view_settings(env=os.environ, grace_s: float | None = None) -> Settings:
    """The watcher's settings from the environment; `grace_s` (`ctl tail --stale-after-s`) overrides the grace."""
    s = settings_from_env(env)
    if grace_s is not None:
        from dataclasses import replace

        s = replace(s, grace_s=grace_s)
    return s


def _read(read, run_id):
    """(exists, record): an unreadable record exists but reads as None."""
    try:
        rec = read(run_id)
    except p.RecordError:
        return True, None
    return rec is not None, rec


def read_facts(rs: RunStore, run_id: str) -> RunFacts:
    """Every fact `assess` looks at except the instance, read in full from the store."""
    f = RunFacts(run_id)
    _, f.metadata = _read(rs.read_metadata, run_id)
    try:
        f.heartbeat = rs.read_heartbeat(run_id)
    except p.RecordError as exc:
        f.heartbeat_problem = str(exc)
    f.has_error, f.error = _read(rs.read_error, run_id)
    f.has_complete, f.complete = _read(rs.read_complete, run_id)
    f.stop_requested = rs.stop_requested(run_id)
    return f


def wants_instance(f: RunFacts) -> tuple[str, str | None] | None:
    """(instance id, region) when the watcher would ask EC2 about this run, else None."""
    md = f.metadata
    if not (md and md.instance_id):
        return None
    interrupted = bool(f.error and f.error.cause == INTERRUPTED and not f.has_complete)
    return (md.instance_id, md.region) if not (f.has_error or f.has_complete) or interrupted else None


def add_instances(facts: Iterable[RunFacts], ec2: Ec2Enricher | None) -> dict[str, InstanceInfo]:
    """Fill `instance` of the facts that want one: one batched describe per region, as the watcher does."""
    facts = list(facts)
    wanted = [w for f in facts if (w := wants_instance(f))]
    if ec2 is None or not wanted:
        return {}
    infos = ec2.describe(wanted)
    for f in facts:
        if wants_instance(f):
            f.instance = infos.get(f.metadata.instance_id)
    return infos


def judge(rs: RunStore, run_id: str, now: float, settings: Settings,
          ec2: Ec2Enricher | None = None) -> tuple[RunFacts, RunState]:
    """One run's facts and the watcher's verdict on them at `now`."""
    f = read_facts(rs, run_id)
    add_instances([f], ec2)
    return f, assess(f, now, settings)


def finished(st: RunState) -> bool:
    """Whether the state is terminal: a marker ended the run, so it has no live heartbeat."""
    return st.state in TERMINAL_STATES


def outcome(st: RunState) -> str:
    """The coarse word scripts read (`outcome` in --json): the terminal state, else `running`."""
    return st.state if finished(st) else "running"


def ec2_enricher(no_instance: bool = False):
    """The watcher's EC2 lookup for the views (None with --no-instance); errors never fail a view."""
    if no_instance:
        return None
    from ops.ec2 import Ec2Enricher

    return Ec2Enricher(os.environ.get("TRAINCTL_EC2_ENDPOINT") or None, default_region=os.environ.get(
        "AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
