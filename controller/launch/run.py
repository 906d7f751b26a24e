"""`ctl launch`: instance -> SSH -> facts -> preflight -> setup -> stage -> detached start.

Orchestration only: the decisions are in plan.py (pure), the SSH in remote.py, the box-side
work in stage.py / start.py. Every step is idempotent, so a launch killed anywhere can simply
be run again.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from agent.protocol import records as p
from agent.protocol.errors import ConfigError, TrainctlError
from agent.protocol.procs import parse_result
from agent.protocol.runid import new_run_id, validate_run_id
from agent.protocol.runstore import RunStore
from agent.protocol.stores import default_store_url, open_store
from controller.config import RunConfig
from controller.launch import plan, preflight
from controller.launch.autostop import ensure_managed_tag, start_companion
from controller.launch.facts import gather
from controller.launch.remote import Box, LocalBox, SshBox
from controller.launch.resume import resume_box, resume_plan, unclaim
from controller.launch.runenv import check_memory, env_file_bytes, recorded_config


@dataclass
class Target:
    """Where to launch: an EC2 instance, any SSH host, or this machine."""

    kind: str  # existing | host | local
    value: str = ""


@dataclass
class LaunchResult:
    run_id: str
    status: str  # started | already_running
    store_url: str
    host: str
    timings: dict = field(default_factory=dict)
    console_url: str | None = None


def say(msg: str) -> None:
    print(msg, flush=True)


def _store_probe(store_url: str, endpoint: str, region: str) -> tuple[str, int]:
    if not store_url.startswith("s3://"):
        return "", 0
    if endpoint:
        u = urlparse(endpoint)
        return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    return f"s3.{region or 'us-east-1'}.amazonaws.com", 443


def _git_sha() -> str | None:
    from controller.launch.wheel import source_root

    root = source_root()
    if root is None:
        return None
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def _connect(cfg: RunConfig, target: Target) -> tuple[Box, dict]:
    """The box, connected, and what we know of the instance (for metadata)."""
    info: dict = {}
    if target.kind == "local":
        return LocalBox(), info
    ssh = cfg.ssh
    if target.kind == "existing":
        from controller.launch.ec2 import ec2_client, ensure_running
        from ops.pricing import launch_price

        client = ec2_client(cfg.instance.region, cfg.instance.profile, cfg.instance.endpoint_url)
        inst = ensure_running(client, target.value, start_if_stopped=cfg.instance.start_if_stopped,
                              allow_no_gpu=cfg.instance.allow_no_gpu, timeout_s=cfg.instance.wait_timeout_s,
                              poll_s=cfg.instance.poll_s, say=say)
        ensure_managed_tag(client, inst.id, say)  # the watcher's idle-instance scan filters on it
        address = inst.address(cfg.instance.address)
        if not address:
            raise TrainctlError(f"instance {inst.id} has no {cfg.instance.address} address: set "
                                f"instance.address = \"private\" when you reach it through a bastion")
        info = {"instance_id": inst.id, "instance_type": inst.type, "region": inst.region}
        info["hourly_usd"], info["price_basis"] = launch_price(client, inst.type, inst.lifecycle, inst.zone)
        box = SshBox(address, pin_name=inst.id, user=ssh.user, port=ssh.port, key=ssh.key,
                     ssh_config=ssh.config, connect_timeout=ssh.connect_timeout_s, say=say)
    else:
        user, _, hostport = target.value.rpartition("@")
        host, _, port = hostport.partition(":")
        if not host or (port and not port.isdigit()):
            raise ConfigError(f"--host {target.value!r}: use user@host or user@host:port")
        box = SshBox(host, user=user or ssh.user, port=int(port or 0) or ssh.port, key=ssh.key,
                     ssh_config=ssh.config, connect_timeout=ssh.connect_timeout_s, say=say)
    say(f"connecting to {box.name}")
    box.wait_ready(ssh.wait_timeout_s, poll_s=min(2.0, cfg.instance.poll_s))
    return box, info


def launch(cfg: RunConfig, target: Target, run_id: str | None = None, dry_run: bool = False,
           resume: bool = False) -> LaunchResult:
    """Launch (or find already running) a run on the target; returns once the agent is started.

    `dry_run` stops after preflight and prints the steps a launch would run: facts are gathered
    (read-only), nothing is changed on the box or in the store.
    """
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = max(0.0, round(time.monotonic() - t0 - sum(timings.values()), 3))

    store_url = cfg.store.url or default_store_url()
    if target.kind != "local" and not store_url.startswith("s3://"):
        raise ConfigError(f"store {store_url!r}: a remote box and this machine must share the store; "
                          f"use an s3:// store (store.url / --store)")
    run_id = validate_run_id(run_id) if run_id else new_run_id(cfg.name)
    rs = RunStore(open_store(store_url, endpoint_url=cfg.store.endpoint_url or None,
                             region=cfg.store.region or None))
    resuming = resume_plan(rs, run_id, say) if resume else None  # controller.launch.resume
    if not resuming and (rs.store.exists(rs.k(run_id, p.COMPLETE)) or rs.store.exists(rs.k(run_id, p.ERROR))):
        raise ConfigError(f"run {run_id} already finished in {rs.url}: pick a new --run-id (or omit it)")
    if target.kind == "local":
        cfg.setup.mode, cfg.setup.python = "current", sys.executable
    wheel = None
    if cfg.setup.mode == "venv":
        from controller.launch import wheel as wheels

        wheel = wheels.prebuilt(cfg.setup.wheel) if cfg.setup.wheel else wheels.build(say)
    lay = plan.Layout(cfg.box.data_root, plan.plan_hash(plan.install_plan(cfg, wheel)),
                      wheel.key if wheel else "", wheel.filename if wheel else "", cfg.setup.mode, cfg.setup.python)
    lap("prepare")
    box, info = _connect(cfg, target)
    try:
        lap("connect")
        prior = rs.read_metadata(run_id)
        if prior is not None and not resuming:  # a resumed run moves to another box on purpose
            # An instance keeps its id across stop/start (its IP does not); other boxes are known by address.
            theirs, ours = (prior.instance_id, info.get("instance_id")) if prior.instance_id else (prior.host, box.name)
            if theirs and theirs != ours:
                raise ConfigError(f"run {run_id} was launched on {theirs}, not {ours or box.name}: two boxes must "
                                  f"not write one run; omit --run-id for a new one")
        region = cfg.store.region or info.get("region") or os.environ.get("AWS_DEFAULT_REGION", "")
        host, port = _store_probe(store_url, cfg.store.endpoint_url, region)
        facts = gather(box, {"data_root": cfg.box.data_root, "seed_python": cfg.setup.python, "venv": lay.venv,
                             "wheel_path": lay.wheel_path, "active_file": lay.active_file,
                             "store_host": host, "store_port": port})
        box.needs_sudo = facts.uid != 0 and target.kind != "local"
        lap("facts")
        other = (facts.active_run or {}).get("run_id")
        other_done = bool(other and other != run_id and facts.active_run.get("alive") and _finished(rs, other))
        decision = plan.start_decision(facts.active_run, run_id, other_done)
        if decision == "already_running":
            say(f"run {run_id} is already running on {box.name} (agent pid {facts.active_run.get('pid')})")
            return LaunchResult(run_id, "already_running", rs.url, box.name, timings)
        if decision == "busy":
            other = facts.active_run.get("run_id")
            raise TrainctlError(f"{box.name} is busy with run {other}: one run per box. Wait for it "
                                f"(ctl tail {other}), or stop it (ctl stop {other} --wait), then launch again")
        problems, mount_steps = preflight.preflight(facts, cfg, box.needs_sudo)
        if problems:
            lines = "\n  ".join(str(x) for x in problems)
            raise TrainctlError(f"preflight found {len(problems)} problem(s) on {box.name}:\n  {lines}")
        say(f"preflight ok: python {'.'.join(map(str, facts.python))}, "
            f"{len(facts.gpus) or 'no'} GPU(s), {facts.free_bytes / 1e9:.0f} GB free under {cfg.box.data_root}")
        user = box.conn.user if isinstance(box, SshBox) else (facts.user or "root")
        steps = mount_steps + plan.setup_steps(facts, cfg, lay, wheel, user, box.needs_sudo)
        workdir = lay.workdir(run_id)
        if dry_run:
            _print_plan(steps, cfg, lay, run_id, rs.url, workdir)
            return LaunchResult(run_id, "dry_run", rs.url, box.name, timings)
        for step in steps:
            _run_step(box, step, cfg.ssh.command_timeout_s)
        lap("setup")
        fresh = _make_workdir(box, workdir)
        try:
            targets = plan_stage(cfg)
            env_file = f"{workdir}/agent.env"
            box.put_bytes(env_file_bytes(cfg, region, targets), env_file, 0o600)
            if cfg.trainer.config:
                box.put_file(os.path.expanduser(cfg.trainer.config), f"{workdir}/train.toml")
            if targets:
                spec = {"targets": targets, "endpoint_url": cfg.store.endpoint_url, "region": region,
                        "workers": cfg.stage.workers, "env_file": env_file}
                _boxside(box, lay, "stage", spec, "staging model/data", cfg.ssh.command_timeout_s, stream=True)
            check_memory(box, plan.estimate_argv(cfg, lay, workdir, facts.gpus), say)
        except TrainctlError:
            if fresh:  # a refused launch leaves nothing of its run on the box (the 0600 agent.env included)
                box.run(f"rm -rf {shlex.quote(workdir)}")
            raise
        if resuming:
            claimed = resume_box(box, rs, resuming, workdir, lambda spec: _boxside(
                box, lay, "stage", {"endpoint_url": cfg.store.endpoint_url, "region": region, "workers": cfg.stage.workers,
                                    "env_file": env_file, **spec}, "fetching the checkpoint", cfg.ssh.command_timeout_s))
        lap("stage")
        if prior is not None and not resuming and _finished(rs, run_id):
            # Its agent ended while we set up: never overwrite a finished run's record with "launching".
            raise ConfigError(f"run {run_id} finished while this launch was setting up: see `ctl tail {run_id}`; "
                              f"omit --run-id for a new run")
        argv = plan.agent_argv(cfg, lay, run_id, rs.url, cfg.store.endpoint_url, info.get("hourly_usd"),
                               info.get("price_basis"))
        rs.write_metadata(p.Metadata(
            run_id=run_id, created=time.time(), phase="launching", config=recorded_config(cfg),
            command=plan.trainer_argv(cfg, lay, workdir), host=box.name, git_sha=_git_sha(),
            heartbeat_s=cfg.agent.heartbeat_s, workdir=workdir, trainctl_version=p.trainctl_version(),
            instance_id=info.get("instance_id"), instance_type=info.get("instance_type"),
            region=info.get("region") or region or None))
        res = _boxside(box, lay, "start", {
            "run_id": run_id, "argv": argv, "workdir": workdir, "env_file": env_file, "user": user,
            "lock_file": lay.lock_file, "active_file": lay.active_file, "systemd": facts.systemd,
            "finished_run": other if other_done else None,
            "grace_s": min(1.0, cfg.agent.heartbeat_s)}, "starting the agent", 120)
        if resuming and res.get("status") == "busy":
            unclaim(rs, resuming, claimed)  # no agent of ours started: the run stays resumable
        start_companion(box, lay.box_python, f"{lay.home}/runs", cfg, target.kind, say)  # controller.launch.autostop
        lap("start")
    finally:
        box.close()
    return _report(res, rs, run_id, box, timings, wrote_metadata=prior is None, cfg=cfg)


def _print_plan(steps: list[plan.Step], cfg: RunConfig, lay: plan.Layout, run_id: str, store_url: str,
                workdir: str) -> None:
    say(f"dry run for {run_id}: these steps would run (nothing was changed)")
    for st in steps:
        if st.cached:
            say(f"  - {st.name}: cached, skipped")
        elif st.upload:
            say(f"  - {st.name}: upload {st.upload[0]} -> {st.upload[1]}")
        else:
            say(f"  - {st.name}:\n      {st.script}")
    for t in plan_stage(cfg):
        say(f"  - stage {t['name']}: {t['src']} -> {t['dest']} (files whose size and ETag match are skipped)")
    say(f"  - start the agent detached in {workdir}:\n      "
        + " ".join(shlex.quote(a) for a in plan.agent_argv(cfg, lay, run_id, store_url, cfg.store.endpoint_url)))


def _finished(rs: RunStore, run_id: str) -> bool:
    try:
        return rs.store.exists(rs.k(run_id, p.COMPLETE)) or rs.store.exists(rs.k(run_id, p.ERROR))
    except Exception:  # an unreadable or foreign run id: treat it as running, the safe side
        return False


def follow_options(store_url: str, endpoint_url: str, region: str) -> str:
    """The store options a printed follow-up command needs to find this run (pure)."""
    opts = [f"--store {shlex.quote(store_url)}"]
    if endpoint_url:
        opts.append(f"--endpoint-url {shlex.quote(endpoint_url)}")
    if region:
        opts.append(f"--store-region {shlex.quote(region)}")
    return " ".join(opts)


def _report(res: dict, rs: RunStore, run_id: str, box: Box, timings: dict, wrote_metadata: bool,
            cfg: RunConfig) -> LaunchResult:
    status = res.get("status")
    if status == "already_running":
        say(f"run {run_id} is already running on {box.name} (agent pid {res.get('pid')})")
        return LaunchResult(run_id, status, rs.url, box.name, timings)
    if status == "busy":
        if wrote_metadata:  # ours, written a moment ago for a run that never started
            rs.store.delete(rs.k(run_id, p.METADATA))
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
    console = rs.store.console_url(run_id)
    say(f"\nrun {run_id} started on {box.name} (agent pid {res.get('pid')}, {res.get('via')}) "
        f"in {sum(timings.values()):.1f}s")
    say("  timings:    " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    where = follow_options(rs.url, cfg.store.endpoint_url, cfg.store.region)
    say(f"  follow it:  ctl tail {run_id} {where}")
    say(f"  status:     ctl status {run_id} {where}")
    say(f"  stop it:    ctl stop {run_id} {where}")
    if console:
        say(f"  S3 console: {console}")
    return LaunchResult(run_id, "started", rs.url, box.name, timings, console)


def plan_stage(cfg: RunConfig) -> list[dict]:
    from controller.box.stage import stage_targets

    return stage_targets(cfg.stage.model, cfg.stage.data, cfg.box.data_root)


def _run_step(box: Box, step: plan.Step, timeout: float) -> None:
    if step.cached:
        say(f"setup: {step.name}: cached")
        return
    t = time.monotonic()
    if step.upload:
        box.put_file(step.upload[0], step.upload[1])
    else:
        r = box.check(step.script, step.name, timeout=timeout)
        if r.stdout.strip().endswith("cached"):
            say(f"setup: {step.name}: cached (finished by an earlier launch)")
            return
    say(f"setup: {step.name}: done in {time.monotonic() - t:.1f}s")


def _make_workdir(box: Box, workdir: str) -> bool:
    """Create the run's folder on the box; True when this launch created it (so may remove it)."""
    r = box.check(f"if [ -e {shlex.quote(workdir)} ]; then echo existed; fi; mkdir -p {shlex.quote(workdir)}",
                  "creating the run folder")
    return "existed" not in r.stdout


def _boxside(box: Box, lay: plan.Layout, cmd: str, spec: dict, what: str, timeout: float, stream=False):
    line = f"{shlex.quote(lay.box_python)} -m controller.box.entry {cmd} {shlex.quote(json.dumps(spec))}"
    r = box.run(line, timeout=timeout, stream=stream)
    res = parse_result(r.stdout)
    if isinstance(res, dict) and res.get("error"):
        raise TrainctlError(f"{what} failed on {box.name}: {res['error']}")
    if not r.ok:
        tail = "\n".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-8:])
        raise TrainctlError(f"{what} failed on {box.name} (exit {r.exited}):\n{tail}")
    if res is None:
        raise TrainctlError(f"{what} on {box.name} gave no result: {r.stdout.strip()[-300:]}")
    return res
