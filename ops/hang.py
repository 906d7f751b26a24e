"""Is a live run hung? Judged from its heartbeat alone (pure; ops.state calls it).

Three ways, by what the heartbeat says about where progress comes from:

- A progress source (`trainer`: a progress file; `output`: steps parsed from the log) and a
  published cadence: the run's own deadline (agent.protocol.cadence.assess), never above the
  configured progress timeout; while the cadence is still warming up, the configured timeout.
  Evaluation and checkpoint saving add their learned allowances.
- No progress source, but the agent reads the trainer's output: log silence. Missing progress is
  no evidence against a script whose progress we cannot read; silence is.
- Neither (an older agent, or nothing printed yet): the fixed timeouts of old, from the last
  progress the agent saw (or the launch), longer in setup phases and before the first step.

Idleness is measured at the heartbeat's own `ts` (when the agent saw things), never the watcher's
clock: a heartbeat's age is not idle time, and the box's clock skew cancels out.
"""

from __future__ import annotations

import dataclasses
import math

from agent.protocol import records as p
from agent.protocol.cadence import assess as judge_cadence
from agent.protocol.durations import fmt_duration


@dataclasses.dataclass(frozen=True)
class Hang:
    """A hung verdict: the reason, when the deadline was crossed, and the figures behind it."""

    reason: str
    since: float


def _secs(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _who(hb: p.Heartbeat) -> str:
    return "the agent is alive" + ("" if hb.trainer_alive else " but the trainer process is gone")


def cadence_record(hb: p.Heartbeat, timeout_s: float) -> dict | None:
    """The heartbeat's cadence with its deadline capped at the watcher's `timeout_s` (the configured
    timeout while the agent has not learned one yet); None without a usable record."""
    rec = hb.cadence
    rec = rec if isinstance(rec, dict) else None
    hung_after = _secs(rec.get("hung_after_s")) if rec else None
    if rec is None or hung_after is None or _secs(rec.get("last_step_ts")) is None:
        return None
    return {**rec, "hung_after_s": min(hung_after, timeout_s) if rec.get("learned", True) else timeout_s}


def by_cadence(hb: p.Heartbeat, timeout_s: float) -> tuple[Hang | None, bool]:
    """(the hung verdict or None, whether the cadence judged at all)."""
    rec = cadence_record(hb, timeout_s)
    if hb.progress_source is None or rec is None:
        return None, False
    v = judge_cadence(rec, hb.ts)
    if not v.hung:
        return None, True
    where = f"step {hb.last_step}" if hb.last_step is not None else "after its last step"
    phase = rec.get("phase") or hb.phase or "?"
    how = "the run's own cadence" if rec.get("learned") else "the configured timeout, cadence still warming up"
    allowed = f", {v.phase} allowance {fmt_duration(v.allowance_s)}" if v.phase else ""
    reason = (f"no training progress for {fmt_duration(v.idle_s)} ({where}, phase {phase}; hung after "
              f"{fmt_duration(v.threshold_s)} from {how}{allowed}); {_who(hb)}")
    return Hang(reason, hb.ts - v.idle_s + v.threshold_s), True


def silence_limit(phase: str | None, s) -> float:
    """How long a run with no progress source may print nothing: the log-silence setting, or the
    setup timeout in setup phases (a model download may print nothing for a long time)."""
    return s.setup_progress_timeout_s if phase in p.SETUP_PHASES else s.log_silence_s


def by_log_silence(hb: p.Heartbeat, phase: str | None, s) -> Hang | None:
    """A run with no progress source: hung once its log has been silent past `silence_limit`."""
    last_log = _secs(hb.last_log_ts)
    limit = silence_limit(phase, s)
    silent = hb.ts - last_log
    if silent <= limit:
        return None
    return Hang(f"no log output for {fmt_duration(silent)} while {_who(hb)} (no training progress recognised in its "
                f"output; silent after {fmt_duration(limit)})", last_log + limit)


def _gpu_util(hb: p.Heartbeat) -> str | None:
    utils = [g.get("util_percent") for g in hb.gpus or [] if isinstance(g, dict)]
    utils = [f"{u:g}%" for u in utils if _secs(u) is not None]
    return f"GPU util {'/'.join(utils)}" if utils else None


def evidence(hb: p.Heartbeat | None, phase: str | None, s) -> str | None:
    """`steps every 9.8s, last step 2m 00s ago, hung after 1m 00s, last log line 1m 50s ago, GPU util
    0% (heartbeat)`: what the heartbeat shows about progress, as of its `ts`; None without a heartbeat.
    `s` is the watcher's Settings."""
    if hb is None:
        return None
    parts, rec = [], cadence_record(hb, s.progress_timeout_s)
    if rec is not None and hb.progress_source is not None:
        if (p50 := _secs(rec.get("step_p50_s"))) is not None:
            parts.append(f"steps every {fmt_duration(p50, fine=True)}")
        parts.append(f"last step {fmt_duration(hb.ts - rec['last_step_ts'])} ago")
        v = judge_cadence(rec, hb.ts)
        allowed = f" ({v.phase}: +{fmt_duration(v.allowance_s)})" if v.phase else ""
        parts.append(f"hung after {fmt_duration(v.threshold_s)}{allowed}")
    elif hb.progress_source is None and _secs(hb.last_log_ts) is not None:
        parts += ["no progress source recognised", f"silent after {fmt_duration(silence_limit(phase, s))}"]
    elif (ts := _secs(hb.last_progress_ts)) is not None:
        parts.append(f"last progress {fmt_duration(hb.ts - ts)} ago")
    if (log := _secs(hb.last_log_ts)) is not None:
        parts.append(f"last log line {fmt_duration(hb.ts - log)} ago")
    if gpu := _gpu_util(hb):
        parts.append(gpu)
    return ", ".join(parts) + " (heartbeat)" if parts else None


def by_fixed(hb: p.Heartbeat, md: p.Metadata | None, phase: str | None, now: float, s) -> Hang | None:
    """The fixed timeouts, from the last progress the agent saw (at the heartbeat's `ts`) or, before
    any, from the launch (at the watcher's `now`: metadata's clock is the controller's)."""
    slow = phase in p.SETUP_PHASES or hb.last_step is None
    timeout = s.setup_progress_timeout_s if slow else s.progress_timeout_s
    ref, at = (hb.last_progress_ts, hb.ts) if hb.last_progress_ts else (md.created if md else None, now)
    if ref is None or at - ref <= timeout:
        return None
    where = f"step {hb.last_step}" if hb.last_step is not None else "before the first step"
    return Hang(f"no training progress for {fmt_duration(at - ref)} ({where}, phase {phase or '?'}); {_who(hb)}",
                ref + timeout)


def judge(hb: p.Heartbeat, md: p.Metadata | None, phase: str | None, now: float, s) -> Hang | None:
    """The hung verdict for a live run with a fresh enough heartbeat, or None: by its cadence, by log
    silence when it has no progress source, else by the fixed timeouts. `s` is the watcher's
    ops.state.Settings (not imported: ops.state imports this module)."""
    hang, judged = by_cadence(hb, s.progress_timeout_s)
    if judged:
        return hang
    if hb.progress_source is None and _secs(hb.last_log_ts) is not None:
        return by_log_silence(hb, phase, s)
    return by_fixed(hb, md, phase, now, s)
