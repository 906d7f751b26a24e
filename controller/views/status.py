"""`ctl status` (one screen, instance state included) and `ctl stop` (writes control/stop)."""

from __future__ import annotations

import getpass
import socket
import time

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.runstore import RunStore
from controller.launch.autostop import countdown
from controller.views.facts import read_facts, wants_instance
from controller.views.report import warnings_of
from controller.views.runs import run_row
from ops.ec2 import Ec2Enricher
from ops.state import Settings, assess


def _instance(f, ec2: Ec2Enricher | None) -> str | None:
    """The instance's EC2 state for the screen (asked even for a finished run: autostop, billing);
    the watcher's verdict sees it only when the watcher would have asked."""
    md = f.metadata
    if ec2 is None or not (md and md.instance_id):
        return None
    info = ec2.describe([(md.instance_id, md.region)]).get(md.instance_id)
    if info is None:
        return f"unknown ({(ec2.last_error or 'no answer').splitlines()[0][:120]})"
    if wants_instance(f):
        f.instance = info
    return info.state


def collect(rs: RunStore, run_id: str, now: float, ec2: Ec2Enricher | None = None,
            settings: Settings = Settings()) -> dict:
    """Everything `ctl status` shows, as plain data (also the --json output)."""
    rs.require_run(run_id)
    f = read_facts(rs, run_id)
    state = _instance(f, ec2)
    st = assess(f, now, settings)
    row = run_row(rs, run_id, now, settings, f)
    md, hb, err, done = f.metadata, f.heartbeat, f.error, f.complete
    pr = rs.read_progress(run_id)
    return {
        "run_id": run_id, "store": rs.url, "outcome": row.outcome, "state": st.state, "reason": st.reason,
        "since": st.since, "phase": row.phase, "evidence": st.evidence,
        "created": md.created if md else None, "host": md.host if md else None,
        "instance_id": md.instance_id if md else None, "instance_type": md.instance_type if md else None,
        "instance_state": state, "region": md.region if md else None,
        "step": pr.step if pr else row.step, "total_steps": pr.total_steps if pr else None,
        "loss": pr.loss if pr else None, "tokens_per_s": pr.tokens_per_s if pr else None,
        "eta_s": pr.eta_s if pr else None,
        "heartbeat_age_s": row.heartbeat_age_s, "heartbeat_s": hb.heartbeat_s if hb else None,
        "agent_pid": hb.agent_pid if hb else (md.agent_pid if md else None),
        "trainer_alive": hb.trainer_alive if hb else None,
        "stop_requested": f.stop_requested,
        "error": err.to_dict() if err else None, "complete": done.to_dict() if done else None,
        "command": md.command if md else [], "git_sha": md.git_sha if md else None,
        "console_url": rs.console_url(run_id),
        "autostop": countdown(md, (err or done).ts if (err or done) else None, now, state),
        "oom_attempts": md.oom_attempts if md else [],
        "budget": budget_left(md.budget if md else None, (err or done).ts if (err or done) else now),
        "warnings": [] if (err or done) else [w.__dict__ for w in warnings_of(rs, run_id, md, row.phase, settings)],
    }


def budget_left(budget: dict | None, at: float) -> str | None:
    """What is left of the run's caps at `at` (its marker's time once finished): `runtime 42m left of
    1h; cost $1.10 left of $2.00 (at $1.21/h)`; None without caps. Cost as the agent counts it
    (agent.daemon.caps: hourly price times runtime, 60 s minimum)."""
    if not budget or budget.get("started_ts") is None:
        return None
    ran = max(0.0, at - budget["started_ts"])
    parts = []
    if (cap := budget.get("max_runtime_s")) is not None:
        parts.append(f"runtime {fmt_duration(max(0.0, cap - ran))} left of {fmt_duration(cap)}")
    if (usd := budget.get("max_cost_usd")) is not None and (hourly := budget.get("hourly_usd")) is not None:
        spent = hourly * max(60.0, ran) / 3600.0
        parts.append(f"cost ${max(0.0, usd - spent):,.2f} left of ${usd:,.2f} (at ${hourly:g}/h)")
    return "; ".join(parts) or None


def render(d: dict, now: float) -> str:
    """The one-screen text view."""
    step = "-" if d["step"] is None else (f"{d['step']}/{d['total_steps']}" if d["total_steps"] else str(d["step"]))
    lines = [
        f"run        {d['run_id']}  ({d['state']})",
        f"state      {d['state']}: {d['reason']}",
        *([f"evidence   {d['evidence']}"] if d.get("evidence") and d["outcome"] == "running" else []),
        f"store      {d['store']}",
        f"created    {p.iso(d['created']) or '-'}" + (f"  ({fmt_duration(now - d['created'])} ago)" if d["created"] else ""),
        f"host       {d['host'] or '-'}",
    ]
    if d["instance_id"]:
        lines.append(f"instance   {d['instance_id']} {d['instance_type'] or ''} in {d['region'] or '?'}: "
                     f"{d['instance_state'] or 'not checked'}")
    lines += [
        f"phase      {d['phase'] or '-'}",
        f"step       {step}" + (f"   loss {p.fmt_metric(d['loss'])}" if d["loss"] is not None else "")
        + (f"   {p.fmt_metric(d['tokens_per_s'], ',.0f')} tok/s" if d["tokens_per_s"] else "")
        + (f"   ETA {fmt_duration(d['eta_s'])}" if d["eta_s"] is not None and d["outcome"] == "running" else ""),
    ]
    if d["outcome"] == "running":  # a finished run's last heartbeat says nothing about now
        lines.append(f"heartbeat  {fmt_duration(d['heartbeat_age_s'])} ago"
                     + (f" (every {d['heartbeat_s']:g}s)" if d["heartbeat_s"] else "")
                     + (f", agent pid {d['agent_pid']}" if d["agent_pid"] else "")
                     + ("" if d["trainer_alive"] is None else
                        (", trainer alive" if d["trainer_alive"] else ", trainer NOT running")))
    if d["stop_requested"]:
        lines.append("stop       requested")
    if d["error"]:
        e = d["error"]
        lines += [f"failed     {e.get('cause')}", f"fix        {e.get('remediation')}"]
    if d["complete"]:
        c = d["complete"]
        lines.append(f"completed  in {fmt_duration(c.get('duration_s'))}, "
                     + ", ".join(f"{k} {v}" for k, v in sorted((c.get("final_metrics") or {}).items())))
        for a in c.get("artifacts") or []:
            lines.append(f"artifact   {a.get('name')}: {a.get('uri')}")
    if d["console_url"]:
        lines.append(f"console    {d['console_url']}")
    if d.get("autostop"):
        lines.append(f"autostop   {d['autostop']}")
    if d.get("budget"):
        lines.append(f"budget     {d['budget']}")
    for w in d.get("warnings") or []:
        lines.append(f"warning    {w['kind']}: {w['text']}")
    if d.get("oom_attempts"):
        how = "recovered from OOM" if d["complete"] or d["outcome"] == "running" else "OOM retries"
        lines.append(f"oom        {how}: {p.attempts_text(d['oom_attempts'])} "
                     f"({len(d['oom_attempts'])} restart{'s' if len(d['oom_attempts']) != 1 else ''})")
    return "\n".join(lines)


def request_stop(rs: RunStore, run_id: str, reason: str = "stopped by user") -> str:
    """Write control/stop: 'requested', 'already_requested' or 'finished' (nothing to stop)."""
    rs.require_run(run_id)
    if rs.finished(run_id):
        return "finished"
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    return "requested" if rs.request_stop(run_id, requested_by=who, reason=reason) else "already_requested"


def wait_for_marker(rs: RunStore, run_id: str, timeout_s: float, poll_s: float = 2.0) -> str | None:
    """'complete' / 'error' once a marker appears, None on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = rs.markers(run_id)
        if p.COMPLETE in names:
            return "complete"
        if p.ERROR in names:
            return "error"
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
