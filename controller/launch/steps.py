"""The steps of `ctl launch`, in order: connect -> inspect (facts, preflight) -> setup -> stage -> start.

Each takes the launch's state (controller.launch.context.Launch) and fills in what the next one
needs. The decisions are in plan.py (pure), the SSH in remote.py, the box-side work in
controller/box/. Every step is idempotent, so a launch killed anywhere can simply be run again.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from urllib.parse import urlparse

from agent.protocol import records as p
from agent.protocol.errors import ConfigError, TrainctlError
from agent.protocol.procs import parse_result
from controller.config import RunConfig
from controller.launch import plan, preflight
from controller.launch.autostop import ensure_managed_tag, start_companion
from controller.launch.context import Launch, Target, say
from controller.launch.facts import gather
from controller.launch.remote import Box, LocalBox, SshBox
from controller.launch.resume import resume_box, unclaim
from controller.launch.runenv import check_memory, env_file_bytes, recorded_config


def connect(cfg: RunConfig, target: Target) -> tuple[Box, dict]:
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
    if target.kind == "existing":
        # Tagged only once we are logged in: a launch refused before that leaves the instance untouched.
        ensure_managed_tag(client, inst.id, say)  # the watcher's idle-instance scan filters on it
    return box, info


def _store_probe(store_url: str, endpoint: str, region: str) -> tuple[str, int]:
    if not store_url.startswith("s3://"):
        return "", 0
    if endpoint:
        u = urlparse(endpoint)
        return u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    return f"s3.{region or 'us-east-1'}.amazonaws.com", 443


def _check_same_box(c: Launch) -> None:
    """A relaunch of a run id must land where the run lives (a resume moves on purpose)."""
    prior = c.prior
    if prior is None or c.resuming:
        return
    # An instance keeps its id across stop/start (its IP does not); other boxes are known by address.
    theirs, ours = (prior.instance_id, c.info.get("instance_id")) if prior.instance_id else (prior.host, c.box.name)
    if theirs and theirs != ours:
        raise ConfigError(f"run {c.run_id} was launched on {theirs}, not {ours or c.box.name}: two boxes must "
                          f"not write one run; omit --run-id for a new one")


def _finished(c: Launch, run_id: str) -> bool:
    try:
        return c.rs.finished(run_id)
    except Exception:  # an unreadable or foreign run id: treat it as running, the safe side
        return False


def _our_model_path(cfg: RunConfig) -> str:
    """model.path of our trainer's train.toml with its --train-set overrides ("" for a user's trainer)."""
    if cfg.trainer.command or not cfg.trainer.config:
        return ""
    from train.config import load_config
    from train.schemas import TrainConfig

    path = os.path.expanduser(cfg.trainer.config)
    return str(load_config(TrainConfig, path, cfg.trainer.set, validate=False).model.path or "")


def inspect(c: Launch) -> list[plan.Step] | str:
    """Facts about the box, whether it is free, preflight: the setup steps, or the status
    `already_running` when this run's agent is already there."""
    cfg, box, lay = c.cfg, c.box, c.lay
    c.prior = c.rs.read_metadata(c.run_id)
    _check_same_box(c)
    c.region = cfg.store.region or c.info.get("region") or os.environ.get("AWS_DEFAULT_REGION", "")
    host, port = _store_probe(c.rs.url, cfg.store.endpoint_url, c.region)
    model_dir = preflight.box_model_dir(cfg, _our_model_path(cfg))
    c.facts = facts = gather(box, {"data_root": cfg.box.data_root, "seed_python": cfg.setup.python, "venv": lay.venv,
                                   "wheel_path": lay.wheel_path, "active_file": lay.active_file, "model_dir": model_dir,
                                   "store_host": host, "store_port": port,
                                   "trainer_word": cfg.trainer.command[0] if cfg.trainer.command else ""})
    box.needs_sudo = facts.uid != 0 and c.target.kind != "local"
    c.lap("facts")
    c.other = (facts.active_run or {}).get("run_id")
    c.other_done = bool(c.other and c.other != c.run_id and facts.active_run.get("alive") and _finished(c, c.other))
    decision = plan.start_decision(facts.active_run, c.run_id, c.other_done)
    if decision == "already_running":
        say(f"run {c.run_id} is already running on {box.name} (agent pid {facts.active_run.get('pid')})")
        return "already_running"
    if decision == "busy":
        other = facts.active_run.get("run_id")
        raise TrainctlError(f"{box.name} is busy with run {other}: one run per box. Wait for it "
                            f"(ctl tail {other}), or stop it (ctl stop {other} --wait), then launch again")
    problems, mount_steps = preflight.preflight(facts, cfg, box.needs_sudo, model_dir)
    if problems:
        lines = "\n  ".join(str(x) for x in problems)
        raise TrainctlError(f"preflight found {len(problems)} problem(s) on {box.name}:\n  {lines}")
    say(f"preflight ok: python {'.'.join(map(str, facts.python))}, "
        f"{len(facts.gpus) or 'no'} GPU(s), {facts.free_bytes / 1e9:.0f} GB free under {cfg.box.data_root}")
    c.user = box.conn.user if isinstance(box, SshBox) else (facts.user or "root")
    return mount_steps + plan.setup_steps(facts, cfg, lay, c.wheel, c.user, box.needs_sudo)


def setup(c: Launch, steps: list[plan.Step]) -> None:
    """Run the setup steps (each skipped when cached)."""
    for step in steps:
        if step.cached:
            say(f"setup: {step.name}: cached")
            continue
        t = time.monotonic()
        if step.upload:
            c.box.put_file(step.upload[0], step.upload[1])
        else:
            r = c.box.check(step.script, step.name, timeout=c.cfg.ssh.command_timeout_s)
            if r.stdout.strip().endswith("cached"):
                say(f"setup: {step.name}: cached (finished by an earlier launch)")
                continue
        say(f"setup: {step.name}: done in {time.monotonic() - t:.1f}s")


def plan_stage(cfg: RunConfig) -> list[dict]:
    from controller.box.stage import stage_targets

    return stage_targets(cfg.stage.model, cfg.stage.data, cfg.box.data_root)


def _stage_spec(c: Launch, **spec) -> dict:
    return {"endpoint_url": c.cfg.store.endpoint_url, "region": c.region, "workers": c.cfg.stage.workers,
            "env_file": c.env_file, **spec}


def stage(c: Launch) -> None:
    """The run's folder, its agent.env and train.toml, the model and data, the memory check; the
    checkpoint and the claim when resuming. A refused launch leaves nothing of its run on the box."""
    cfg, box, workdir = c.cfg, c.box, c.workdir
    r = box.check(f"if [ -e {shlex.quote(workdir)} ]; then echo existed; fi; mkdir -p {shlex.quote(workdir)}",
                  "creating the run folder")
    fresh = "existed" not in r.stdout  # this launch created it, so may remove it
    try:
        targets = plan_stage(cfg)
        c.env_file = f"{workdir}/{p.WD_ENV}"
        box.put_bytes(env_file_bytes(cfg, c.region, targets), c.env_file, 0o600)
        if cfg.trainer.config:
            box.put_file(os.path.expanduser(cfg.trainer.config), f"{workdir}/train.toml")
        if targets:
            boxside(box, c.lay, "stage", _stage_spec(c, targets=targets), "staging model/data",
                    cfg.ssh.command_timeout_s, stream=True)
        check_memory(box, plan.estimate_argv(cfg, c.lay, workdir, c.facts.gpus), say)
    except TrainctlError:
        if fresh:  # the 0600 agent.env included
            box.run(f"rm -rf {shlex.quote(workdir)}")
        raise
    if c.resuming:
        c.claimed = resume_box(box, c.rs, c.resuming, workdir, lambda spec: boxside(
            box, c.lay, "stage", _stage_spec(c, **spec), "fetching the checkpoint", cfg.ssh.command_timeout_s))


def _git_sha() -> str | None:
    import subprocess

    from controller.launch.wheel import source_root

    root = source_root()
    if root is None:
        return None
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def start(c: Launch) -> dict:
    """Write the run's metadata and start the agent detached (plus the autostop companion)."""
    cfg, lay, run_id, info, workdir = c.cfg, c.lay, c.run_id, c.info, c.workdir
    if c.prior is not None and not c.resuming and _finished(c, run_id):
        # Its agent ended while we set up: never overwrite a finished run's record with "launching".
        raise ConfigError(f"run {run_id} finished while this launch was setting up: see `ctl tail {run_id}`; "
                          f"omit --run-id for a new run")
    argv = plan.agent_argv(cfg, lay, run_id, c.rs.url, cfg.store.endpoint_url, info.get("hourly_usd"),
                           info.get("price_basis"))
    c.rs.write_metadata(p.Metadata(
        run_id=run_id, created=time.time(), phase="launching", config=recorded_config(cfg),
        command=plan.trainer_argv(cfg, lay, workdir), host=c.box.name, git_sha=_git_sha(),
        heartbeat_s=cfg.agent.heartbeat_s, workdir=workdir, trainctl_version=p.trainctl_version(),
        instance_id=info.get("instance_id"), instance_type=info.get("instance_type"),
        region=info.get("region") or c.region or None))
    res = boxside(c.box, lay, "start", {
        "run_id": run_id, "argv": argv, "workdir": workdir, "env_file": c.env_file, "user": c.user,
        "lock_file": lay.lock_file, "active_file": lay.active_file, "systemd": c.facts.systemd,
        "finished_run": c.other if c.other_done else None,
        "grace_s": min(1.0, cfg.agent.heartbeat_s)}, "starting the agent", 120)
    if c.resuming and res.get("status") == "busy":
        unclaim(c.rs, c.resuming, c.claimed)  # no agent of ours started: the run stays resumable
    start_companion(c.box, lay.box_python, f"{lay.home}/runs", cfg, c.target.kind, say)  # controller.launch.autostop
    return res


def boxside(box: Box, lay: plan.Layout, cmd: str, spec: dict, what: str, timeout: float, stream=False):
    """Run `controller.box.entry <cmd> <spec>` on the box with its python; its JSON result."""
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
