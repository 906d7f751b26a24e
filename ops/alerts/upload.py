"""The loss-curve PNG in the thread of a run's final alert (bot-token mode), once per run.

The alert goes first; the picture follows. When a completed, failed or interrupted run's final
message is delivered with a bot token and the run stored `artifacts/loss_curve.png`, the same
compare-and-set that records the send also records `upload` in the ledger: pending, with the
thread and channel Slack answered. A sweep then claims it under a lease (as messages are
claimed, so two watchers never both upload), reads the bytes from the run store, uploads them
(ApiSink.upload) and records the outcome. A failed upload never touches the alert: it is logged
(the sink cleans the token out), released, and tried again at the next sweep, up to
MAX_ATTEMPTS times, or given up at once on a permanent error (e.g. no files:write scope). A run
with a pending upload stays out of the done index until then.
"""

from __future__ import annotations

import logging

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.state import COMPLETED, FAILED, INTERRUPTED

log = logging.getLogger("trainctl.watch")

UPLOAD_STATES = (COMPLETED, FAILED, INTERRUPTED)  # the final alerts that show the curve
MAX_ATTEMPTS = 3  # one try per sweep; a curve Slack keeps refusing is not worth a run held active
FILENAME = "loss_curve.png"


def queue(led: L.Ledger, msg: dict, thread_ts: str | None, channel: str | None, curve: str | None) -> bool:
    """After `msg` was delivered (inside the CAS that records it): make the run's upload pending when
    `msg` is a final alert of UPLOAD_STATES, Slack gave it a thread (bot token) and the run has a curve
    (`curve`, its store location). Never a second time for a run. True if queued."""
    if (msg.get("kind") != "final" or msg.get("state") not in UPLOAD_STATES or not curve or not thread_ts
            or not channel or led.upload is not None):
        return False
    led.upload = {"pending": True, "thread_ts": thread_ts, "channel": channel, "source": curve,
                  "attempts": 0, "lease": None}
    return True


def pending(led: L.Ledger) -> bool:
    """Whether the run's loss curve still waits to be uploaded."""
    return bool((led.upload or {}).get("pending"))


def _claimable(up: dict | None, owner: str, now: float) -> bool:
    if not up or not up.get("pending"):
        return False
    lease = up.get("lease")
    return not (lease and lease["owner"] != owner and lease["until"] > now)


def claim(led: L.Ledger, owner: str, now: float, lease_s: float) -> bool:
    """Lease the pending upload to `owner` unless another watcher holds a live lease. True if claimed."""
    if not _claimable(led.upload, owner, now):
        return False
    led.upload["lease"] = {"owner": owner, "until": now + lease_s}
    return True


def record(led: L.Ledger, owner: str, now: float, ok: bool, error: str | None = None,
           file_id: str | None = None, permanent: bool = False) -> bool:
    """The outcome of `owner`'s upload: done, released for the next sweep, or given up after
    MAX_ATTEMPTS (or at once when `permanent`). False when the lease is no longer ours."""
    up = led.upload
    if not up or not up.get("pending") or (up.get("lease") or {}).get("owner") != owner:
        return False
    up["attempts"] = up.get("attempts", 0) + 1
    up["lease"] = None
    if ok:
        up.update(pending=False, at=now, file_id=file_id, last_error=None)
        return True
    up["last_error"] = error
    if permanent or up["attempts"] >= MAX_ATTEMPTS:
        up.update(pending=False, gave_up=now)
    return True


def attempt(rs: RunStore, notifier, led: L.Ledger, owner: str, now: float, lease_s: float) -> L.Ledger:
    """Claim, upload and record the run's pending loss curve; the ledger as stored afterwards.
    A failure is logged and left to the next sweep (never raised: the alert already went out)."""
    run_id = led.run_id
    if not _claimable(led.upload, owner, now):
        return led
    led, wrote = L.update(rs, run_id, lambda x: claim(x, owner, now, lease_s))
    if not wrote:
        return led  # another watcher holds it (or did it)
    up = led.upload
    data = rs.store.get(rs.k(run_id, p.LOSS_CURVE))
    if data is None:
        d_ok, err, fid, perm = False, f"{p.LOSS_CURVE} is no longer in the store", None, True
    else:
        d = notifier.upload(up["channel"], up["thread_ts"], data, FILENAME, f"{run_id}: loss curve")
        if d is None:  # the sink lost the means (a permanent Slack error this sweep): try again later
            d_ok, err, fid, perm = False, "Slack is refusing this watcher's posts", None, False
        else:
            d_ok, err, fid, perm = d.delivered, d.error, d.file_id, d.permanent
    led, _ = L.update(rs, run_id, lambda x: record(x, owner, now, d_ok, err, fid, perm))
    if not d_ok:
        after = led.upload or {}
        what = "gave up" if not after.get("pending") else "will retry at the next sweep"
        log.warning("%s: loss curve not uploaded to Slack (attempt %s of %s, %s): %s", run_id,
                    after.get("attempts"), MAX_ATTEMPTS, what, err)
    return led
