"""Which messages a state change calls for (pure; Alertmanager's repeat/resolve/inhibit rules).

- Transitions, not states, alert: a new bad state opens an incident and sends one alert.
- While the incident stays open, repeats back off along `repeat_schedule_s` (1 h, 4 h, daily).
- Back to healthy sends a resolved message (in the alert's thread) with how long it lasted.
- instance_gone inhibits agent_silent and hung: a silent agent on a stopped box is no news.
- Terminal states (failed, completed, stopped by user, corrupt) send one message and close the run.
- A snooze (`ctl ack`) mutes alerts and repeats until it ends; terminal and resolved still go out.
- News older than `backfill_s` at the watcher's first sight of a run is recorded, not sent.
"""

from __future__ import annotations

from ops.alerts.ledger import Ledger
from ops.state import FAILED, HEALTHY, INCIDENT_STATES, INSTANCE_GONE, LAUNCHING, TERMINAL_STATES, RunState, Settings

RESOLVING_STATES = (HEALTHY, LAUNCHING)  # `late` leaves an open incident open: still inside grace


def _queue(ledger: Ledger, kind: str, st: RunState, now: float, **extra) -> dict:
    msg = {"id": ledger.next_id(kind), "kind": kind, "state": st.state, "reason": st.reason, "since": st.since,
           "cause": st.cause, "created": now, "attempts": 0, "lease": None, **extra}
    if st.evidence and kind in ("alert", "repeat"):  # what the heartbeat showed when it was judged
        msg["evidence"] = st.evidence
    ledger.outbox.append(msg)
    return msg


def _repeat_delay(s: Settings, repeats_sent: int) -> float:
    sched = s.repeat_schedule_s
    return sched[min(repeats_sent, len(sched) - 1)]


def _old_news(st: RunState, now: float, s: Settings) -> bool:
    return st.since is not None and now - st.since > s.backfill_s


def decide(ledger: Ledger, st: RunState, now: float, s: Settings, first_sight: bool = False) -> bool:
    """Update `ledger` for assessment `st` at `now`; queue messages in its outbox. True if it changed."""
    before = ledger.to_bytes()
    if ledger.state != st.state:
        ledger.state, ledger.state_since = st.state, (st.since if st.since is not None else now)
    if ledger.closed:
        return ledger.to_bytes() != before
    inc = ledger.incident
    thread = inc.get("thread_ts") if inc else None

    if st.state in TERMINAL_STATES:
        ledger.closed, ledger.incident = True, None
        if first_sight and _old_news(st, now, s):
            ledger.sent.append({"kind": "backfill", "state": st.state, "at": now, "via": "none"})
        else:
            _queue(ledger, "final", st, now, thread_ts=thread, channel=inc.get("channel") if inc else None)
    elif st.state in INCIDENT_STATES:
        inhibited = inc is not None and inc["state"] == INSTANCE_GONE and st.state != INSTANCE_GONE
        if inc is None or (inc["state"] != st.state and not inhibited):
            inc = ledger.incident = {
                "state": st.state, "since": st.since if st.since is not None else now, "opened": now,
                "reason": st.reason, "alerted": False, "alert_id": None, "repeats": 0, "next_repeat": None,
                "thread_ts": thread, "channel": inc.get("channel") if inc else None}
            if first_sight and _old_news(st, now, s):
                # Dead long before anyone watched: record it and stop spending requests on it.
                ledger.closed, ledger.incident = True, None
                ledger.sent.append({"kind": "backfill", "state": st.state, "at": now, "via": "none"})
                return True
        if ledger.snoozed(now):
            pass
        elif not inc["alerted"]:
            msg = _queue(ledger, "alert", st, now, thread_ts=inc.get("thread_ts"), channel=inc.get("channel"))
            inc.update(alerted=True, alert_id=msg["id"], next_repeat=now + _repeat_delay(s, 0))
        elif inc["next_repeat"] is not None and now >= inc["next_repeat"]:
            shown = st if not inhibited else RunState(inc["state"], inc["reason"], inc["since"], st.phase)
            inc["repeats"] += 1
            _queue(ledger, "repeat", shown, now, thread_ts=inc.get("thread_ts"), channel=inc.get("channel"),
                   repeat=inc["repeats"], lasted_s=now - inc["since"])
            inc["next_repeat"] = now + _repeat_delay(s, inc["repeats"])
    elif st.state in RESOLVING_STATES and inc is not None:
        ledger.incident = None
        if inc["alerted"]:
            was = RunState(st.state, inc["reason"], inc["since"], st.phase)
            _queue(ledger, "resolved", was, now, was_state=inc["state"], lasted_s=now - inc["since"],
                   thread_ts=inc.get("thread_ts"), channel=inc.get("channel"))
    return ledger.to_bytes() != before


def notice_oom(ledger: Ledger, f, st: RunState, now: float) -> bool:
    """One "recovered from OOM: batch 4 -> 2" notice per OOM restart the agent recorded (agent.daemon.
    oomretry; in the heartbeat while it runs, in `_complete` after), instead of a failure alert. A run
    that failed anyway gets none: its failure alert lists the attempts. True if a notice was queued."""
    attempts = (f.heartbeat.oom_attempts if f.heartbeat else None) or (f.complete.oom_attempts if f.complete
                                                                       else None) or []
    if not attempts or ledger.closed or st.state == FAILED:
        return False
    first, last = attempts[0], attempts[-1]
    reason = (f"recovered from OOM: batch {first.get('micro_batch')} -> {last.get('next_micro_batch')} "
              f"(grad_accum {first.get('grad_accum')} -> {last.get('next_grad_accum')}, effective batch unchanged; "
              f"restarted from the newest checkpoint at step {last.get('step')})")
    if any(m.get("kind") == "notice" and m.get("reason") == reason for m in ledger.outbox + ledger.sent):
        return False
    _queue(ledger, "notice", RunState(st.state, reason, last.get("ts"), st.phase), now)
    return True


WARNING_KINDS = ("warning", "warning_resolved")  # messages of ops.warnings: never an incident, never a page


def decide_warnings(ledger: Ledger, active: list, st: RunState, now: float, s: Settings) -> bool:
    """Queue one "warning" per warning (ops.warnings.RunWarning) that became active, repeats backed
    off along `repeat_schedule_s` while it stays, and a "warning_resolved" once it clears. The
    incident and the run's state are left alone. True if anything was queued or recorded."""
    if ledger.closed:
        return False
    changed, now_kinds = False, {w.kind: w for w in active}
    for kind, w in now_kinds.items():
        entry = ledger.warnings.get(kind)
        if entry is None:
            entry = ledger.warnings[kind] = {"since": now, "text": w.text, "repeats": 0,
                                             "next_repeat": now + _repeat_delay(s, 0)}
            if not ledger.snoozed(now):
                _queue(ledger, "warning", RunState(st.state, w.text, now, st.phase), now, warning=kind)
            changed = True
        elif now >= entry["next_repeat"] and not ledger.snoozed(now):
            entry["repeats"] += 1
            entry["text"], entry["next_repeat"] = w.text, now + _repeat_delay(s, entry["repeats"])
            _queue(ledger, "warning", RunState(st.state, w.text, entry["since"], st.phase), now, warning=kind,
                   repeat=entry["repeats"], lasted_s=now - entry["since"])
            changed = True
    for kind in [k for k in ledger.warnings if k not in now_kinds]:
        entry = ledger.warnings.pop(kind)
        _queue(ledger, "warning_resolved", RunState(st.state, entry["text"], entry["since"], st.phase), now,
               warning=kind, lasted_s=now - entry["since"])
        changed = True
    return changed
