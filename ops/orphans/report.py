"""Idle GPU boxes: a trainctl-tagged instance running with no active run (pure decisions, the record, the message).

An instance's idle stretch starts when a sweep first sees it running with no active run on it;
the record of that stretch (`_orphans/<region>/<instance-id>.json`) is created create-only and
changed only by compare-and-set, like the run ledger, so the alert goes out once however many
watchers sweep or restart. A run on the box (or a stop and start, which changes LaunchTime)
ends the stretch; the next idle stretch is a new orphan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.redact import redact
from ops.alerts.message import Message
from ops.ec2 import TaggedInstance
from ops.pricing import PRICE_TABLE_DATE, fmt_cost, hourly_price, run_cost

RECORD_VERSION = 1
WAIT, START, CLAIM = "wait", "start", "claim"


@dataclass
class OrphanRecord(p.Record):
    """One idle stretch of one instance, and whether (and how) it was reported.

    A protocol Record, so reading it keeps the one known-fields rule; its own schema version.
    """

    NAME: ClassVar[str] = "orphan record"
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("idle_since",)

    instance_id: str
    region: str
    idle_since: float
    instance_type: str | None = None
    launch_time: float | None = None
    name: str | None = None
    alerted_at: float | None = None
    via: str | None = None
    lease: dict | None = None  # {"owner", "until"}: a watcher is sending the alert
    attempts: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the record's fields, `idle_since_iso`, and the orphan schema version."""
        return {**super().to_dict(), "schema_version": RECORD_VERSION}


def record_key(region: str, instance_id: str) -> str:
    """The store key of an orphan record (declared in the protocol: agent.protocol.records)."""
    return p.orphan_name(region, instance_id)


def parse_key(key: str) -> tuple[str, str] | None:
    """(region, instance id) of an orphan record key, None for anything else."""
    return p.orphan_of(key)


def new_record(inst: TaggedInstance, now: float) -> OrphanRecord:
    return OrphanRecord(inst.instance_id, inst.region, now, inst.instance_type, inst.launch_time, inst.name)


def same_boot(rec: OrphanRecord, inst: TaggedInstance) -> bool:
    """A stop and start gives the instance a new LaunchTime: a new stretch, not the old one."""
    if rec.launch_time is None or inst.launch_time is None:
        return True
    return abs(rec.launch_time - inst.launch_time) < 1.0


def decide(rec: OrphanRecord | None, inst: TaggedInstance, now: float, after_s: float, owner: str,
           lease_s: float) -> tuple[str, OrphanRecord | None]:
    """What to do for an idle tagged instance: (`start`, record to create or replace),
    (`claim`, record leased to `owner` for sending), or (`wait`, None)."""
    if rec is None or not same_boot(rec, inst):
        return START, new_record(inst, now)
    if rec.alerted_at is not None or now - rec.idle_since < after_s:
        return WAIT, None
    lease = rec.lease
    if lease and lease.get("owner") != owner and lease.get("until", 0) > now:
        return WAIT, None
    claimed = OrphanRecord.from_bytes(rec.to_bytes())
    claimed.lease = {"owner": owner, "until": now + lease_s}
    return CLAIM, claimed


def delivered(rec: OrphanRecord, now: float, via: str, error: str | None) -> OrphanRecord:
    """The record after a successful send."""
    done = OrphanRecord.from_bytes(rec.to_bytes())
    done.alerted_at, done.via, done.lease, done.last_error = now, via, None, error
    done.attempts += 1
    return done


def released(rec: OrphanRecord, error: str | None) -> OrphanRecord:
    """The record after a failed send: no lease, so the next sweep tries again."""
    out = OrphanRecord.from_bytes(rec.to_bytes())
    out.lease, out.last_error = None, error
    out.attempts += 1
    return out


def stop_command(instance_id: str, region: str) -> str:
    return f"aws ec2 stop-instances --instance-ids {instance_id} --region {region}"


def build_message(rec: OrphanRecord, now: float, store_url: str = "") -> Message:
    """The orphan alert: what the box costs per hour, what it has cost idle, and how to stop it."""
    iid, itype = rec.instance_id, rec.instance_type
    price = hourly_price(itype)
    idle = max(0.0, now - rec.idle_since)
    per_hour = f"{fmt_cost(price)}/h" if price is not None else "unknown (no price for this type)"
    header = f"💸 Idle GPU instance {iid}" + (f" ({per_hour})" if price is not None else "")
    fields_ = {"Instance": f"{iid} ({itype or '?'}, {rec.region})" + (f" “{rec.name}”" if rec.name else ""),
               "Status": "RUNNING, NO ACTIVE RUN",
               "Reason": f"no active trainctl run on it for {fmt_duration(idle)} (since {p.iso(rec.idle_since)})",
               "Hourly cost": f"{per_hour} (on-demand price table {PRICE_TABLE_DATE})" if price else per_hour,
               "Idle so far": fmt_cost(run_cost(itype, idle))}
    if rec.launch_time:
        fields_["Running since"] = p.iso(rec.launch_time)
    fields_ = {k: redact(v) for k, v in fields_.items()}  # the Name tag is free text typed by someone
    stop = stop_command(iid, rec.region)
    action = (f"If nobody is using it, stop it: `{stop}` (stop, not terminate: the data volume stays; "
              f"`ctl launch --existing {iid}` starts it again).")
    note = (f"No unfinished run in {store_url or 'the run store'} names this instance; "
            "reported once per idle stretch.")
    blocks = [HeaderBlock(text=header[:150]),
              SectionBlock(fields=[MarkdownTextObject(text=f"*{k}:*\n{v}") for k, v in fields_.items()]),
              SectionBlock(text=MarkdownTextObject(text=f"🔧 *Action required:* {action}")),
              ContextBlock(elements=[MarkdownTextObject(text=note)])]
    text = "\n".join([header] + [f"{k}: {v}" for k, v in fields_.items()] + [f"🔧 Action required: {action}", note])
    return Message(text=text, blocks=[b.to_dict() for b in blocks], header=header, fields=fields_)
