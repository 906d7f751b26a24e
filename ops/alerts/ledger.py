"""The per-run alert ledger (`_alerts.json`): what was decided, claimed and sent, in the store.

Every change is a compare-and-set on the ledger object (create-only for the first write), so
two watchers sweeping the same store, or a watcher restarted mid-sweep, never both claim the
same transition. A message is first put in the `outbox` with a lease for the watcher that
will send it; only after Slack accepted it does it move to `sent`. A send that failed stays
in the outbox without a lease and goes out on the next sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.protocol.records import ALERTS, Record
from agent.protocol.runstore import RunStore
from ops import cas

LEDGER_VERSION = 1
SENT_KEEP = 50  # history entries kept; older ones are dropped


@dataclass
class Ledger(Record):
    """One run's alert history. `incident` is the open bad stretch, if any.

    A protocol Record, so reading it keeps the one known-fields rule (unknown fields from a newer
    watcher are dropped, missing optional ones filled); only its own schema version differs.
    """

    NAME: ClassVar[str] = ALERTS
    run_id: str
    state: str | None = None
    state_since: float | None = None
    incident: dict | None = None  # state, since, opened, reason, alerted, repeats, next_repeat, thread_ts, channel
    snooze_until: float | None = None
    snoozed_by: str | None = None
    closed: bool = False  # terminal message decided: nothing more will be sent for this run
    seq: int = 0
    outbox: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # cached metadata: instance_id, region, heartbeat_s, created
    message: dict | None = None  # bot-token mode: the run's one Slack message {ts, channel}, updated in place
    warnings: dict = field(default_factory=dict)  # active warnings by kind: since, text, repeats, next_repeat
    warnings_checked: float | None = None  # when a sweep last judged the warnings (every Settings.warnings.check_s)
    upload: dict | None = None  # bot-token mode: the loss-curve PNG for the final alert's thread (ops.alerts.upload)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the record's fields with the ledger's schema version."""
        return {**super().to_dict(), "schema_version": LEDGER_VERSION}

    def snoozed(self, now: float) -> bool:
        return self.snooze_until is not None and now < self.snooze_until

    def next_id(self, kind: str) -> str:
        self.seq += 1
        return f"{self.seq:04d}-{kind}"

    @property
    def finished(self) -> bool:
        """Closed and nothing left to deliver (no message, no loss-curve upload): the run can leave the active set."""
        return self.closed and not self.outbox and not (self.upload or {}).get("pending")


@dataclass
class Loaded:
    ledger: Ledger
    etag: str | None  # None: no ledger stored yet (the first write is create-only)


def _decoder(run_id: str) -> Callable[[bytes | None], Ledger]:
    def decode(raw: bytes | None) -> Ledger:
        if raw is None:
            return Ledger(run_id)
        try:
            return Ledger.from_bytes(raw)
        except (ValueError, TypeError):
            # An unreadable ledger is replaced (CAS on its etag) rather than blocking alerts forever.
            return Ledger(run_id)
    return decode


def _cell(rs: RunStore, run_id: str) -> cas.Cell:
    return cas.Cell(lambda: rs.read_alerts_versioned(run_id), lambda data, etag: rs.write_alerts(run_id, data, etag))


def load(rs: RunStore, run_id: str) -> Loaded:
    """The stored ledger (or a fresh one) with the version tag for the next compare-and-set."""
    r = cas.read(_cell(rs, run_id), _decoder(run_id))
    return Loaded(r.value, r.etag)


def update(rs: RunStore, run_id: str, change: Callable[[Ledger], bool], first: Loaded | None = None,
           attempts: int = 8) -> tuple[Ledger, bool]:
    """Apply `change` (returns False for "nothing to write") under compare-and-set, re-reading on races.

    Returns the ledger as stored afterwards and whether this call wrote it.
    """
    start = cas.Read(first.ledger, first.etag, first.ledger.to_bytes()) if first else None
    return cas.update(_cell(rs, run_id), _decoder(run_id), lambda led: led if change(led) else None,
                      Ledger.to_bytes, first=start, attempts=attempts, what=f"ledger of {run_id}")


def claim_outbox(ledger: Ledger, owner: str, now: float, lease_s: float) -> list[dict]:
    """Lease every outbox message that nobody holds (or whose lease ran out) to `owner`."""
    claimed = []
    for msg in ledger.outbox:
        lease = msg.get("lease")
        if lease and lease["owner"] != owner and lease["until"] > now:
            continue
        msg["lease"] = {"owner": owner, "until": now + lease_s}
        claimed.append(msg)
    return claimed


def record_result(ledger: Ledger, msg_id: str, owner: str, now: float, delivered: bool, via: str,
                  error: str | None = None, thread_ts: str | None = None, channel: str | None = None) -> bool:
    """Move a delivered message to `sent`, or release a failed one for the next sweep."""
    msg = next((m for m in ledger.outbox if m["id"] == msg_id), None)
    if msg is None or (msg.get("lease") or {}).get("owner") != owner:
        return False  # someone else took it over after our lease expired; they record it
    if not delivered:
        msg["attempts"] = msg.get("attempts", 0) + 1
        msg["last_error"] = error
        msg["lease"] = None
        return True
    ledger.outbox.remove(msg)
    entry = {k: msg.get(k) for k in ("id", "kind", "state", "reason", "since", "created")}
    entry.update(at=now, via=via, attempts=msg.get("attempts", 0) + 1)
    if error:
        entry["slack_error"] = error
    if thread_ts:
        entry["thread_ts"] = thread_ts
    ledger.sent = (ledger.sent + [entry])[-SENT_KEEP:]
    inc = ledger.incident
    if thread_ts and inc is not None and inc.get("alert_id") == msg_id:
        inc["thread_ts"], inc["channel"] = thread_ts, channel
    return True


def snooze_run(rs: RunStore, run_id: str, seconds: float, by: str, now: float) -> float | None:
    """`ctl ack`: mute the run's alerts and repeats until now + seconds (0 lifts it). Returns the end."""
    rs.require_run(run_id)
    until = now + seconds if seconds > 0 else None

    def change(led: Ledger) -> bool:
        led.snooze_until, led.snoozed_by = until, (by or None) if until else None
        return True

    update(rs, run_id, change)
    return until
