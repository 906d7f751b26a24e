"""Which runs a sweep must look at, without reading every finished run.

The store holds one marker per run that is finished and fully alerted: `_index/done/<run-id>`
(create-only, written by the watcher once a run's terminal message was delivered or a run was
recorded as too old to alert). A sweep costs two listings, both delimiter/prefix listings that
return 1,000 names per page: the run folders, and the done markers. Only the difference, the
active runs, is read. Nothing here depends on the agent writing index entries, so runs launched
by any version of the agent (or by hand) are still watched.
"""

from __future__ import annotations

import json
import time

from agent.protocol.runstore import RunStore


def done_runs(rs: RunStore) -> set[str]:
    """Run ids with a done marker."""
    return rs.done_index()


def active_runs(rs: RunStore) -> tuple[list[str], int]:
    """(run ids to read this sweep, how many runs the store holds in total)."""
    runs = rs.list_runs()
    done = done_runs(rs)
    return [r for r in runs if r not in done], len(runs)


def mark_done(rs: RunStore, run_id: str, state: str | None, now: float | None = None) -> bool:
    """Record that `run_id` needs no more sweeps. Create-only: the first watcher wins."""
    rec = {"run_id": run_id, "state": state, "ts": now if now is not None else time.time()}
    return rs.mark_done(run_id, json.dumps(rec).encode())


def forget(rs: RunStore, run_id: str) -> None:
    """Put a run back in the active set (e.g. after deleting its ledger by hand)."""
    rs.unmark_done(run_id)
