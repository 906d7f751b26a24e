"""What a run is doing right now, computed from stored facts and `now` alone (no I/O here).

Modelled on healthchecks: every state comes with the real deadline that was crossed (`since`)
and a reason a human can read. Precedence, strongest first: terminal markers, the EC2 instance
being gone, then agent liveness (heartbeat age), then training progress (hung: ops/hang.py, by the
run's own cadence, by log silence when no progress can be read, else by the fixed timeouts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from ops import hang
from ops.warnings import WarningSettings

LAUNCHING, HEALTHY, LATE = "launching", "healthy", "late"
AGENT_SILENT, HUNG, INSTANCE_GONE = "agent_silent", "hung", "instance_gone"
FAILED, COMPLETED, STOPPED_BY_USER, CORRUPT = "failed", "completed", "stopped_by_user", "corrupt"
INTERRUPTED = "interrupted"  # the agent was told to shut down (spot reclaim, reboot): resumable

OK_STATES = (LAUNCHING, HEALTHY, LATE)
INCIDENT_STATES = (AGENT_SILENT, HUNG, INSTANCE_GONE)  # bad and possibly recoverable
TERMINAL_STATES = (FAILED, COMPLETED, STOPPED_BY_USER, CORRUPT, INTERRUPTED)  # one message, then done
GONE_EC2_STATES = ("stopping", "stopped", "shutting-down", "terminated", "not-found")
SPOT_CODES = ("Server.SpotInstanceTermination", "Server.SpotInstanceShutdown")

DEFAULT_HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class Settings:
    """Every interval the watcher uses; `scaled(f)` shrinks them all by one factor for tests."""

    heartbeat_s: float | None = None  # None: use the run's own heartbeat_s
    grace_s: float = 60.0
    progress_timeout_s: float = 900.0  # the most a run's own cadence may allow between steps
    log_silence_s: float = 900.0  # no progress source recognised: no new log bytes this long = hung
    setup_progress_timeout_s: float = 3600.0  # setup, downloads, data prep, first step
    launch_timeout_s: float = 900.0  # metadata written, no heartbeat yet
    max_clock_skew_s: float = 120.0
    repeat_schedule_s: tuple[float, ...] = (3600.0, 14400.0, 86400.0)
    backfill_s: float = 86400.0  # older news at first sight is recorded, not sent
    lease_s: float = 120.0  # how long a claimed send is reserved for its watcher
    orphan_after_s: float | None = 1800.0  # tagged instance running with no active run; None: never
    warnings: WarningSettings = WarningSettings()  # the thresholds of ops.warnings (not scaled: a share, a step count)

    def scaled(self, factor: float) -> Settings:
        """A copy with every duration multiplied by `factor`."""
        return dataclasses.replace(
            self,
            heartbeat_s=None if self.heartbeat_s is None else self.heartbeat_s * factor,
            grace_s=self.grace_s * factor, progress_timeout_s=self.progress_timeout_s * factor,
            log_silence_s=self.log_silence_s * factor,
            setup_progress_timeout_s=self.setup_progress_timeout_s * factor,
            launch_timeout_s=self.launch_timeout_s * factor, max_clock_skew_s=self.max_clock_skew_s * factor,
            repeat_schedule_s=tuple(s * factor for s in self.repeat_schedule_s),
            backfill_s=self.backfill_s * factor, lease_s=self.lease_s * factor,
            orphan_after_s=None if self.orphan_after_s is None else self.orphan_after_s * factor)


@dataclass
class InstanceInfo:
    """The EC2 view of a run's instance (from one batched describe_instances per sweep)."""

    instance_id: str
    state: str  # pending | running | stopping | stopped | shutting-down | terminated | not-found
    reason_code: str | None = None
    reason_message: str | None = None
    transition_at: float | None = None
    spot: bool = False
    instance_type: str | None = None

    @property
    def spot_interrupted(self) -> bool:
        return self.reason_code in SPOT_CODES

    @property
    def gone(self) -> bool:
        return self.state in GONE_EC2_STATES or self.spot_interrupted

    def describe(self) -> str:
        """`instance i-0abc was stopped by spot interruption at 14:02 UTC`."""
        if self.state == "not-found":
            return f"instance {self.instance_id} no longer exists in EC2 (terminated)"
        verb = {"stopping": "is stopping", "stopped": "was stopped", "shutting-down": "is shutting down",
                "terminated": "was terminated"}.get(self.state, f"is {self.state}")
        if self.spot_interrupted:
            cause = " by spot interruption"
        elif self.reason_code == "Client.UserInitiatedShutdown":
            cause = " by a user (API or console)"
        elif self.reason_code == "Client.InstanceInitiatedShutdown":
            cause = " from inside the instance (shutdown/poweroff)"
        elif self.reason_message:
            cause = f" ({self.reason_message})"
        else:
            cause = ""
        when = f" at {p.iso(self.transition_at)[11:16]} UTC" if self.transition_at else ""
        return f"instance {self.instance_id} {verb}{cause}{when}"


@dataclass
class RunFacts:
    """Everything `assess` may look at, already read from the store and EC2."""

    run_id: str
    metadata: p.Metadata | None = None
    heartbeat: p.Heartbeat | None = None
    heartbeat_problem: str | None = None  # heartbeat.json exists but cannot be read
    has_error: bool = False
    error: p.ErrorMarker | None = None
    has_complete: bool = False
    complete: p.CompleteMarker | None = None
    stop_requested: bool = False
    instance: InstanceInfo | None = None


@dataclass
class RunState:
    """The assessment: a state, why, and when it became true (the deadline that was crossed)."""

    state: str
    reason: str
    since: float | None = None
    phase: str | None = None
    cause: str | None = None  # the agent's cause id for failed runs
    clock_skew_s: float | None = None
    evidence: str | None = None  # what the heartbeat shows about progress (ops.hang.evidence), live runs only


def by_spot_reclaim(e: p.ErrorMarker, inst: InstanceInfo | None) -> bool:
    """Whether an `interrupted` run was ended by EC2 reclaiming spot capacity: the agent's summary
    names the interruption notice, or EC2 says the instance is (or was stopped as) spot."""
    text = f"{e.summary or ''} {e.signal or ''}".lower()
    return any(w in text for w in ("spot", "instance-action", "interruption notice")) or bool(
        inst and (inst.spot or inst.spot_interrupted))


def interruption_reason(e: p.ErrorMarker, inst: InstanceInfo | None) -> str:
    """`interrupted by a spot reclaim at step 420`, or the generic shutdown wording without evidence of spot."""
    where = f"at step {e.last_step}" if e.last_step is not None else "before the first step"
    if by_spot_reclaim(e, inst):
        return f"interrupted by a spot reclaim {where}"
    return f"interrupted {where} (the agent was told to shut down: spot reclaim, reboot or systemctl stop)"


def _terminal(f: RunFacts, phase: str | None) -> RunState | None:
    if f.has_error and f.has_complete:
        return RunState(CORRUPT, "both _error and _complete exist: the run's outcome cannot be trusted",
                        since=max((m.ts for m in (f.error, f.complete) if m), default=None), phase=phase)
    if f.has_complete:
        c = f.complete
        # The agent's own words say how many artifacts verified (an older agent's marker has none).
        return RunState(COMPLETED, (c.reason if c and c.reason else None) or "training finished and its artifacts "
                        "were verified", since=c.ts if c else None, phase=phase)
    if f.has_error:
        e = f.error
        if e is None:
            return RunState(FAILED, "_error exists but cannot be read", phase=phase)
        if e.cause == INTERRUPTED:
            return RunState(INTERRUPTED, interruption_reason(e, f.instance), since=e.ts, phase=e.phase or phase,
                            cause=e.cause)
        state = STOPPED_BY_USER if e.cause == "stopped_by_user" else FAILED
        return RunState(state, e.summary or e.cause, since=e.ts, phase=e.phase or phase, cause=e.cause)
    return None


def assess(f: RunFacts, now: float, s: Settings = Settings()) -> RunState:
    """The run's state at `now` from its facts; pure, so every situation is a table row in tests."""
    md, hb = f.metadata, f.heartbeat
    phase = (hb.phase if hb and hb.phase else None) or (md.phase if md else None)
    done = _terminal(f, phase)
    if done:
        return done
    if f.instance and f.instance.gone:
        return RunState(INSTANCE_GONE, f.instance.describe(), since=f.instance.transition_at, phase=phase)
    hb_s = s.heartbeat_s or (hb.heartbeat_s if hb else None) or (md.heartbeat_s if md else None) or DEFAULT_HEARTBEAT_S

    if hb is None:
        if f.heartbeat_problem:
            return RunState(AGENT_SILENT, f"heartbeat.json is unreadable ({f.heartbeat_problem}): "
                            "the agent cannot be proven alive", phase=phase)
        if f.stop_requested:
            return RunState(STOPPED_BY_USER, "a stop was requested before the agent sent a heartbeat", phase=phase)
        if md is None:
            return RunState(LAUNCHING, "no metadata.json or heartbeat yet", phase=phase)
        deadline = md.created + s.launch_timeout_s
        if now <= deadline:
            return RunState(LAUNCHING, f"launched {fmt_duration(now - md.created)} ago, waiting for the first heartbeat",
                            since=md.created, phase=phase)
        return RunState(AGENT_SILENT, f"no heartbeat since launch {fmt_duration(now - md.created)} ago "
                        "(the agent never started or cannot reach the store)", since=deadline, phase=phase)

    age = now - hb.ts
    if age < -s.max_clock_skew_s:
        return RunState(AGENT_SILENT, f"heartbeat is stamped {fmt_duration(-age)} in the future: the instance clock is "
                        "wrong, so the agent cannot be proven alive", phase=phase, clock_skew_s=-age)
    skew = -age if age < 0 else None
    age = max(age, 0.0)
    if age > hb_s + s.grace_s:
        if f.stop_requested:
            return RunState(STOPPED_BY_USER, "a stop was requested and the agent has gone quiet",
                            since=hb.ts + hb_s + s.grace_s, phase=phase)
        return RunState(AGENT_SILENT, f"no heartbeat for {fmt_duration(age)} (expected every {fmt_duration(hb_s)}, "
                        f"grace {fmt_duration(s.grace_s)})", since=hb.ts + hb_s + s.grace_s, phase=phase)

    ev = hang.evidence(hb, phase, s)
    hung = None if f.stop_requested else hang.judge(hb, md, phase, now, s)
    if hung is not None:
        return RunState(HUNG, hung.reason, since=hung.since, phase=phase, clock_skew_s=skew, evidence=ev)
    if age > hb_s:
        return RunState(LATE, f"heartbeat {fmt_duration(age)} old, inside the {fmt_duration(s.grace_s)} grace",
                        since=hb.ts + hb_s, phase=phase, clock_skew_s=skew, evidence=ev)
    return RunState(HEALTHY, "heartbeat fresh" + (f" (agent clock {fmt_duration(skew)} ahead)" if skew else ""),
                    since=hb.ts, phase=phase, clock_skew_s=skew, evidence=ev)
