"""What `ctl launch` tells the user: the dry-run plan, and the outcome of the start with the commands
to follow the run (every store option they need)."""

from __future__ import annotations

import shlex
import time

from agent.protocol import records as p
from agent.protocol.errors import TrainctlError
from controller.launch import plan
from controller.launch.context import Launch, LaunchResult, say
from controller.launch.steps import plan_stage


def print_plan(c: Launch, steps: list[plan.Step]) -> None:
    """The dry run: every step a launch would run, nothing changed."""
    cfg = c.cfg
    say(f"dry run for {c.run_id}: these steps would run (nothing was changed)")
    for st in steps:
        if st.cached:
            say(f"  - {st.name}: cached, skipped")
        elif st.upload:
            say(f"  - {st.name}: upload {st.upload[0]} -> {st.upload[1]}")
        else:
            say(f"  - {st.name}:\n      {st.script}")
    for t in plan_stage(cfg):
        say(f"  - stage {t['name']}: {t['src']} -> {t['dest']} (files whose size and ETag match are skipped)")
    say(f"  - start the agent detached in {c.workdir}:\n      "
        + " ".join(shlex.quote(a) for a in plan.agent_argv(cfg, c.lay, c.run_id, c.rs.url, cfg.store.endpoint_url)))


def follow_options(store_url: str, endpoint_url: str, region: str) -> str:
    """The store options a printed follow-up command needs to find this run (pure)."""
    opts = [f"--store {shlex.quote(store_url)}"]
    if endpoint_url:
        opts.append(f"--endpoint-url {shlex.quote(endpoint_url)}")
    if region:
        opts.append(f"--store-region {shlex.quote(region)}")
    return " ".join(opts)


def report(res: dict, c: Launch) -> LaunchResult:
    """Turn the box's start result into the launch's: started, already running, or a clear error
    (recorded as `_error` where the watcher and `ctl runs` look when the agent exited at once)."""
    rs, run_id, box = c.rs, c.run_id, c.box
    status = res.get("status")
    if status == "already_running":
        say(f"run {run_id} is already running on {box.name} (agent pid {res.get('pid')})")
        return c.result(status)
    if status == "busy":
        if c.prior is None:  # ours, written a moment ago for a run that never started
            rs.delete_metadata(run_id)
        raise TrainctlError(f"{box.name} became busy with run {res.get('run_id')} while launching: one run per box")
    if status == "failed":
        tail = res.get("output") or []
        # Record it where `ctl runs`, the watcher and Slack look, not only on this terminal.
        rs.write_error(run_id, p.ErrorMarker(
            ts=time.time(), cause="the agent did not start", exit_code=res.get("exit_code"), phase="launching",
            remediation="read the agent output below (bad trainer command or flag?), fix it, and launch a new run id",
            summary=f"ctl agent run exited at once with code {res.get('exit_code')}", log_tail=tail))
        out = "\n    ".join(tail)
        raise TrainctlError(f"the agent for {run_id} exited at once (code {res.get('exit_code')}); recorded as "
                            f"_error:\n    {out}")
    console = rs.console_url(run_id)
    say(f"\nrun {run_id} started on {box.name} (agent pid {res.get('pid')}, {res.get('via')}) "
        f"in {sum(c.timings.values()):.1f}s")
    say("  timings:    " + ", ".join(f"{k} {v:.1f}s" for k, v in c.timings.items()))
    where = follow_options(rs.url, c.cfg.store.endpoint_url, c.cfg.store.region)
    say(f"  follow it:  ctl tail {run_id} {where}")
    say(f"  status:     ctl status {run_id} {where}")
    say(f"  stop it:    ctl stop {run_id} {where}")
    if console:
        say(f"  S3 console: {console}")
    return c.result("started", console)
