"""One sweep over the store: observe active runs, enrich with EC2, decide, claim, send, record.

The order matters for "never twice, never lost": a message is claimed (queued with a lease for
this watcher) by a compare-and-set on the run's ledger before anything is posted, and moved to
`sent` only after the post succeeded. Runs whose ledger is closed and empty join the done
index and cost nothing on later sweeps.
"""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.protocol.errors import StoreError
from agent.protocol.records import SAMPLES
from agent.protocol.runstore import RunStore
from ops import facts as F
from ops import index
from ops.alerts import ledger as L
from ops.alerts import upload as U
from ops.alerts.message import build
from ops.alerts.policy import WARNING_KINDS, decide, decide_warnings, notice_oom
from ops.alerts.slack import Notifier
from ops.ec2 import Ec2Enricher
from ops.interact import with_buttons
from ops.orphans.scan import OrphanScan
from ops.state import HEALTHY, INTERRUPTED, LATE, TERMINAL_STATES, Settings, assess
from ops.warnings import assess_warnings


@dataclass
class SweepReport:
    """What a sweep saw and did (the CLI prints it; the Lambda returns it)."""

    runs: int = 0
    active: int = 0
    states: Counter = field(default_factory=Counter)
    sent: int = 0
    failed: int = 0
    pending: int = 0
    done: int = 0
    idle_instances: int = 0  # trainctl-tagged running instances with no active run
    errors: list[str] = field(default_factory=list)
    last_send_error: str | None = None  # why the last failed send failed (no secrets: sinks clean it)

    def as_dict(self) -> dict:
        return {"runs": self.runs, "active": self.active, "states": dict(self.states), "sent": self.sent,
                "failed": self.failed, "pending": self.pending, "done": self.done,
                "idle_instances": self.idle_instances, "errors": self.errors,
                "last_send_error": self.last_send_error}


@dataclass
class RunOutcome:
    """What handling one run did."""

    state: str
    sent: int = 0
    failed: int = 0
    pending: int = 0
    done: int = 0
    error: str | None = None


class Watcher:
    """Sweeps one store. `owner` names this watcher in leases (unique per process by default)."""

    def __init__(self, rs: RunStore, notifier: Notifier, settings: Settings = Settings(),
                 ec2: Ec2Enricher | None = None, owner: str | None = None, workers: int = 8, buttons: bool = False):
        self.rs, self.notifier, self.settings, self.ec2, self.workers = rs, notifier, settings, ec2, workers
        self.buttons = buttons  # Snooze 4h / Stop run on alerts: only where an interactivity endpoint answers
        self.owner = owner or f"watcher-{uuid.uuid4().hex[:12]}"
        self.orphans = OrphanScan(rs, ec2, notifier, self.owner, settings.lease_s) if ec2 is not None else None

    def sweep(self, now: float) -> SweepReport:
        """Run one sweep at time `now`. Runs are read and handled in parallel (I/O bound)."""
        rep = SweepReport()
        ids, rep.runs = index.active_runs(self.rs)
        seen = self._sweep_ids(ids, rep, now)
        if len(seen) == len(ids):  # a run we could not read might be the one keeping a box busy
            self._scan_orphans(seen, rep, now)
        return rep

    def sweep_runs(self, run_ids, now: float) -> SweepReport:
        """Handle just `run_ids` (a pushed marker named them) at `now`: no listing, no orphan scan.

        Duplicate, late or reordered events are harmless: each run is assessed from what the store
        holds now, and the ledger's compare-and-set keeps every message to one send."""
        ids = sorted(set(run_ids))
        rep = SweepReport(runs=len(ids))
        self._sweep_ids(ids, rep, now, pushed=True)
        return rep

    def _sweep_ids(self, ids: list[str], rep: SweepReport, now: float, pushed: bool = False) -> list[F.Observed]:
        rep.active = len(ids)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            seen = []
            for run_id, got in zip(ids, pool.map(lambda r: self._guard(F.observe, self.rs, r, now, self.settings),
                                                 ids), strict=True):
                if isinstance(got, str):
                    rep.errors.append(f"{run_id}: {got}")
                elif pushed and not (got.facts.has_error or got.facts.has_complete):
                    rep.active -= 1  # no marker (a stale event, a deleted run): the schedule's business
                else:
                    seen.append(got)
            self._enrich(seen, rep)
            for o, res in zip(seen, pool.map(lambda o: self._guard(self._handle, o, now), seen), strict=True):
                if isinstance(res, str):
                    rep.errors.append(f"{o.facts.run_id}: {res}")
                    continue
                rep.states[res.state] += 1
                rep.sent += res.sent
                rep.failed += res.failed
                rep.pending += res.pending
                rep.done += res.done
                rep.last_send_error = res.error or rep.last_send_error
        return seen

    def _scan_orphans(self, seen: list[F.Observed], rep: SweepReport, now: float) -> None:
        """One tagged describe_instances per region: idle trainctl boxes alert once, with their cost."""
        if self.orphans is None or not self.settings.orphan_after_s:
            return
        live = [o.facts.metadata for o in seen if o.facts.metadata and o.facts.metadata.instance_id
                and not (o.facts.has_error or o.facts.has_complete)]
        regions = {self.ec2.default_region} | {md.region for md in live if md.region}
        orep = self.orphans.run({md.instance_id for md in live}, regions, now, self.settings.orphan_after_s)
        rep.idle_instances, rep.sent, rep.failed = orep.idle, rep.sent + orep.sent, rep.failed + orep.failed
        rep.errors += orep.errors

    @staticmethod
    def _guard(fn, *args):
        """Run one run's step; its failure is that run's problem (reported), not the whole sweep's."""
        try:
            return fn(*args)
        except StoreError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a record no message can be built from
            return f"{type(exc).__name__}: {exc}"

    def _enrich(self, seen: list[F.Observed], rep: SweepReport) -> None:
        """One batched EC2 lookup for every run with a known instance and no terminal marker."""
        if self.ec2 is None:
            return
        wanted = [(o.facts.metadata.instance_id, o.facts.metadata.region) for o in seen
                  if o.facts.metadata and o.facts.metadata.instance_id
                  and (not (o.facts.has_error or o.facts.has_complete) or _interrupted(o.facts))]
        if not wanted:
            return
        infos = self.ec2.describe(wanted)
        if self.ec2.last_error:
            rep.errors.append(self.ec2.last_error)
        for o in seen:
            if o.facts.metadata and o.facts.metadata.instance_id:
                o.facts.instance = infos.get(o.facts.metadata.instance_id)

    def _handle(self, o: F.Observed, now: float) -> RunOutcome:
        run_id = o.facts.run_id
        st = assess(o.facts, now, self.settings)
        checked = o.loaded.ledger.warnings_checked
        due = checked is None or now - checked >= self.settings.warnings.check_s  # 2 GETs: not every sweep
        warns = _read_warnings(self.rs, o.facts, st, self.settings) if due else None
        out = RunOutcome(st.state)
        first_sight = o.loaded.etag is None

        def change(led: L.Ledger) -> bool:
            changed = False
            if o.cache is not None and led.facts != o.cache:
                led.facts, changed = dict(o.cache), True
            changed |= notice_oom(led, o.facts, st, now)  # before a final message: it happened first
            changed |= decide(led, st, now, self.settings, first_sight=first_sight)
            if warns is not None:  # judged only while the run runs: an incident leaves them as they were
                led.warnings_checked, changed = now, True
                changed |= decide_warnings(led, warns, st, now, self.settings)
            changed |= bool(L.claim_outbox(led, self.owner, now, self.settings.lease_s))
            return changed

        led, wrote = L.update(self.rs, run_id, change, first=o.loaded)
        mine = [m for m in led.outbox if wrote and (m.get("lease") or {}).get("owner") == self.owner]
        if mine:
            mf = F.message_facts(self.rs, o.facts)
            for msg in mine:
                parent = _parent(led, msg)
                body = build(msg, mf)
                if self.buttons and msg["kind"] in ("alert", "repeat"):
                    body.blocks = with_buttons(body.blocks, run_id)
                d = self.notifier.send(body, thread_ts=parent["ts"] if parent else None,
                                       channel=parent["channel"] if parent else msg.get("channel"),
                                       key=f"{run_id}/{msg['id']}")
                out.sent += d.delivered
                out.failed += not d.delivered
                out.error = d.error if not d.delivered else out.error
                led, _ = L.update(self.rs, run_id,
                                  lambda x, m=msg, d=d: _record(x, m, d, self.owner, now, mf.loss_curve))
                if d.delivered and parent and parent["channel"] and msg["kind"] not in WARNING_KINDS:
                    # Bot token: the run's first post tells the current state; the reply holds the details.
                    u = self.notifier.update(parent["channel"], parent["ts"], body)
                    out.error = u.error if u is not None and not u.delivered else out.error
        if U.pending(led):  # bot token: the final alert's loss curve, after the alert itself
            led = U.attempt(self.rs, self.notifier, led, self.owner, now, self.settings.lease_s)
        out.pending = len(led.outbox)
        if led.finished:
            index.mark_done(self.rs, run_id, led.state if led.state in TERMINAL_STATES else "backfill", now)
            out.done = 1
        return out


def _read_warnings(rs: RunStore, f: F.RunFacts, st, settings: Settings) -> list | None:
    """A running run's active warnings (ops.warnings) from its samples and history; None when it is
    not healthy or late (hung, gone, finished: the incident or the final message speaks)."""
    if st.state not in (HEALTHY, LATE):
        return None
    samples = rs.store.get_json(rs.k(f.run_id, SAMPLES))
    config = f.metadata.config if f.metadata else {}
    return assess_warnings(samples, rs.read_history(f.run_id), config, st.phase == "training", settings.warnings)


def _interrupted(f: F.RunFacts) -> bool:
    """An interrupted run's message says whether spot capacity was reclaimed: ask EC2 about its box."""
    return bool(f.error and f.error.cause == INTERRUPTED and not f.has_complete)


def _parent(led: L.Ledger, msg: dict) -> dict | None:
    """The Slack message `msg` replies to, {ts, channel}: the incident's alert, else the run's first post.

    Only a bot token gets a ts back, so webhook alerts never have one and post as before."""
    inc = led.incident or {}
    ts = msg.get("thread_ts") or (inc.get("thread_ts") if msg["kind"] in ("repeat", "resolved") else None)
    channel = msg.get("channel") or inc.get("channel")
    if not ts and led.message:
        ts, channel = led.message.get("ts"), led.message.get("channel")
    return {"ts": ts, "channel": channel or (led.message or {}).get("channel")} if ts else None


def _record(led: L.Ledger, msg: dict, d, owner: str, now: float, curve: str | None = None) -> bool:
    """Record a send; the run's first delivered post with a ts becomes the message later ones update.
    A delivered final alert of a run with a loss curve (`curve`) queues its upload in the same write."""
    changed = L.record_result(led, msg["id"], owner, now, d.delivered, d.via, d.error, d.thread_ts, d.channel)
    if changed and d.delivered and d.thread_ts and d.channel and led.message is None:
        led.message = {"ts": d.thread_ts, "channel": d.channel}
    if changed and d.delivered:
        U.queue(led, msg, d.thread_ts, d.channel, curve)
    return changed
