"""The orphan part of a sweep: one tagged describe_instances per region, one listing of `_orphans/`,
and a read only for instances that are idle right now.

Order for "once, never lost": an idle stretch is recorded create-only at first sight; when it is
older than `orphan_after_s` a watcher leases the record by compare-and-set, posts, and only then
marks it alerted. A failed post releases the lease, so the next sweep (of any watcher) retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.protocol.runstore import RunStore
from ops import cas
from ops.alerts.slack import Notifier
from ops.ec2 import Ec2Enricher, TaggedInstance
from ops.orphans import report as O


@dataclass
class OrphanReport:
    """What the orphan scan saw and did in one sweep."""

    tagged: int = 0  # running instances with the trainctl tag
    idle: int = 0  # ... of which no active run names
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class OrphanScan:
    """Finds trainctl-tagged running instances with no active run and alerts once per idle stretch."""

    def __init__(self, rs: RunStore, ec2: Ec2Enricher, notifier: Notifier, owner: str, lease_s: float,
                 cas_attempts: int = 5):
        self.rs, self.ec2, self.notifier, self.owner = rs, ec2, notifier, owner
        self.lease_s, self.cas_attempts = lease_s, cas_attempts
        self._failing: dict[str, str] = {}  # region -> the EC2 error already reported

    def run(self, active: set[str], regions: set[str], now: float, after_s: float) -> OrphanReport:
        """`active`: instance ids named by a run without a terminal marker (read this sweep)."""
        rep = OrphanReport()
        running: dict[str, list[TaggedInstance]] = {}
        for region in sorted(regions):
            try:
                running[region] = self.ec2.tagged_running(region)
                self._failing.pop(region, None)
            except Exception as exc:  # noqa: BLE001 - no credentials, throttled: skip, keep the records
                err = f"orphan scan: EC2 describe_instances in {region} failed: {type(exc).__name__}: {exc}"
                if self._failing.get(region) != err:  # said once, not every sweep (e.g. a laptop without AWS)
                    rep.errors.append(err)
                self._failing[region] = err
        if not any(running.values()):
            return rep  # no tagged box running: nothing to read or write (stale records wait for a new boot)
        stored = set(self.rs.list_orphans())  # (region, instance id)
        idle: list[TaggedInstance] = []
        for insts in running.values():
            rep.tagged += len(insts)
            idle += [i for i in insts if i.instance_id not in active]
        keep = {(i.region, i.instance_id) for i in idle}
        for region, iid in stored:
            # Busy again, stopped or gone: the stretch is over; the next idle stretch is a new orphan.
            if region in running and (region, iid) not in keep:
                self.rs.delete_orphan(region, iid)
        rep.idle = len(idle)
        for inst in idle:
            try:
                self._one(inst, (inst.region, inst.instance_id) in stored, now, after_s, rep)
            except Exception as exc:  # noqa: BLE001 - one instance's store trouble is reported, not fatal
                rep.errors.append(f"orphan {inst.instance_id}: {type(exc).__name__}: {exc}")
        return rep

    def _one(self, inst: TaggedInstance, has_record: bool, now: float, after_s: float, rep: OrphanReport) -> None:
        key = (inst.region, inst.instance_id)
        v = self.rs.read_orphan_versioned(*key) if has_record else None
        rec = _parse(v.data) if v else None
        action, new = O.decide(rec, inst, now, after_s, self.owner, self.lease_s)
        if action == O.WAIT:
            return
        won = self.rs.write_orphan(*key, new.to_bytes(), v.etag if v else None)
        if not won or action == O.START:
            return  # another watcher moved first: its record stands
        d = self.notifier.send(O.build_message(new, now, self.rs.url))
        rep.sent += d.delivered
        rep.failed += not d.delivered
        self._record(key, now, d.delivered, d.via, d.error)

    def _record(self, key: tuple[str, str], now: float, ok: bool, via: str, error: str | None) -> None:
        def change(rec: O.OrphanRecord | None) -> O.OrphanRecord | None:
            if rec is None or (rec.lease or {}).get("owner") != self.owner:
                return None  # our lease ran out and another watcher took over: it records the outcome
            return O.delivered(rec, now, via, error) if ok else O.released(rec, error)

        cell = cas.Cell(lambda: self.rs.read_orphan_versioned(*key),
                        lambda data, etag: self.rs.write_orphan(*key, data, etag))
        cas.update(cell, lambda raw: _parse(raw) if raw is not None else None, change, O.OrphanRecord.to_bytes,
                   attempts=self.cas_attempts, what=f"orphan record of {key[1]}")


def _parse(raw: bytes) -> O.OrphanRecord | None:
    try:
        return O.OrphanRecord.from_bytes(raw)
    except (ValueError, TypeError):
        return None  # unreadable: replaced by a fresh stretch (compare-and-set on its etag)
