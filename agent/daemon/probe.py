"""The agent's start-up store probe: a store that cannot work refuses the run before the trainer starts.

One listing of the run's top-level markers answers two questions at once: does the store work
(a listing is what fails on a missing bucket, bad credentials, denied access or the wrong region;
a HEAD of a key in a missing bucket only says 404), and is the run already finished. A permanent
failure (StoreRefused) stops a fresh run with one line and a non-zero exit; a transient one
(connection refused, 5xx, throttling, timeouts) is logged and ridden out with the spool, as is any
failure once a trainer is already running (an agent restarted under a live trainer never leaves it).
"""

from __future__ import annotations

import logging
import time

from agent.daemon.duties import STORE_ERRORS
from agent.protocol import records as p
from agent.protocol.errors import StoreRefused
from agent.protocol.runstore import RunStore

log = logging.getLogger("trainctl.agent")


def probe_store(rs: RunStore, run_id: str, *, fresh: bool) -> bool:
    """Whether the run already has a terminal marker; raises StoreRefused for a fresh run on a store
    that cannot work. The result is in the agent's log either way."""
    t0 = time.monotonic()
    try:
        names = rs.markers(run_id)
    except StoreRefused as exc:
        if fresh:
            log.error("store probe: %s; the run is refused before its trainer starts", exc)
            raise
        log.error("store probe: %s; a trainer is already running, so the agent keeps it and spools", exc)
        return False
    except STORE_ERRORS as exc:
        log.warning("store probe: %s; this looks transient: the trainer starts and its log is spooled "
                    "until the store answers", exc)
        return False
    log.info("store probe: %s answered in %.2fs", rs.location(run_id), time.monotonic() - t0)
    return bool(names & {p.ERROR, p.COMPLETE})
