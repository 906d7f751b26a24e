"""PURE: facts + config -> the ordered steps to run (setup, start) and the commands. No I/O here.

Learned from pyinfra: gather facts first, compute the commands as a function of them, then run
them through one connection module. Every decision here (which setup steps are cached, whether
a run is already active, the exact agent and trainer command lines) is table-tested in
tests/controller/test_plan.py; preflight lives in preflight.py.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

from controller.config import RunConfig
from controller.launch.facts import Facts

q = shlex.quote
SETUP_LOCK_WAIT_S = 1800  # a launch killed mid-setup leaves its step running on the box; wait for it


@dataclass
class Step:
    """One thing to do on the box: a shell script, or an upload of a local file."""

    name: str
    script: str = ""
    upload: tuple[str, str] | None = None  # (local path, remote path)
    cached: bool = False  # nothing to do: reported, not run


@dataclass(frozen=True)
class Wheel:
    """The locally built trainctl wheel: `key` changes exactly when the source changes."""

    path: str
    filename: str
    key: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """Where things live on the box, all under the data root."""

    data_root: str
    plan_hash: str
    wheel_key: str = ""
    wheel_filename: str = ""
    mode: str = "venv"
    python: str = "python3"

    @property
    def home(self) -> str:
        return f"{self.data_root.rstrip('/')}/trainctl"

    @property
    def venv(self) -> str:
        return f"{self.home}/venvs/{self.plan_hash}" if self.mode == "venv" else ""

    @property
    def wheel_path(self) -> str:
        return f"{self.home}/wheels/{self.wheel_key}/{self.wheel_filename}" if self.wheel_key else ""

    @property
    def box_python(self) -> str:
        return f"{self.venv}/bin/python" if self.mode == "venv" else self.python

    @property
    def ctl(self) -> list[str]:
        if self.mode == "venv":
            return [f"{self.venv}/bin/ctl"]
        return [self.python, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]

    @property
    def active_file(self) -> str:
        return f"{self.home}/active.json"

    @property
    def lock_file(self) -> str:
        return f"{self.home}/launch.lock"

    @property
    def install_log(self) -> str:
        return f"{self.home}/install.log"

    def workdir(self, run_id: str) -> str:
        return f"{self.home}/runs/{run_id}"


def install_plan(cfg: RunConfig, wheel: Wheel | None) -> dict:
    """What defines a venv: changing any of it builds a fresh venv (the old one stays usable)."""
    s = cfg.setup
    return {"python": s.python, "system_site_packages": s.system_site_packages, "extras": sorted(s.extras),
            "install_deps": s.install_deps, "pip_args": list(s.pip_args), "commands": list(s.commands),
            "requires": sorted(wheel.requires) if wheel else [], "v": 1}


def plan_hash(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def seed_pip(facts: Facts) -> bool:
    """Whether the seed's pip can install into another environment (`pip --python`, pip >= 22.3).

    Then the venv is made --without-pip: ensurepip is most of a fresh venv's cost (~6-10 s).
    """
    version = str((facts.seed or {}).get("pip") or "")
    try:
        return tuple(int(x) for x in version.split(".")[:2]) >= (22, 3)
    except ValueError:
        return False


def pip_cmd(cfg: RunConfig, facts: Facts, lay: Layout) -> str:
    if seed_pip(facts):
        return f"{q(cfg.setup.python)} -m pip --python {q(lay.venv)}/bin/python"
    return f"{q(lay.venv)}/bin/python -m pip"


def _venv_script(cfg: RunConfig, facts: Facts, lay: Layout, wheel: Wheel | None) -> str:
    s, v = cfg.setup, lay.venv
    flags = ("--system-site-packages " if s.system_site_packages else "") + ("--without-pip " if seed_pip(facts) else "")
    lines = [f"rm -rf {q(v)}", f"{q(s.python)} -m venv {flags}{q(v)}"]
    seed = facts.seed or {}
    if s.system_site_packages and seed.get("prefix") != seed.get("base_prefix"):
        # The seed is itself a venv: --system-site-packages would reach its base, not its packages.
        site = "\n".join(seed.get("site") or [])
        lines.append(f"printf '%s\\n' {q(site)} > \"$({q(v)}/bin/python -c "
                     f"'import sysconfig;print(sysconfig.get_paths()[\"purelib\"])')/trainctl-seed.pth\"")
    if s.install_deps and wheel:
        extras = f"[{','.join(s.extras)}]" if s.extras else ""
        pip = " ".join(q(a) for a in s.pip_args)
        lines.append(f"{pip_cmd(cfg, facts, lay)} install -q {pip} {q(f'trainctl{extras} @ file://{lay.wheel_path}')}")
    for c in s.commands:
        lines.append(f"(. {q(v)}/bin/activate && {c})")
    lines.append(f"echo \"$(date -u +%FT%TZ) venv {lay.plan_hash}\" >> {q(lay.install_log)}")
    lines.append(f"touch {q(v)}/.trainctl-ready")
    return _locked(lay, lines, f"[ -e {q(v)}/.trainctl-ready ]")


def _wheel_script(cfg: RunConfig, facts: Facts, lay: Layout) -> str:
    v = lay.venv
    lines = [f"{pip_cmd(cfg, facts, lay)} install -q --no-deps --force-reinstall --no-index {q(lay.wheel_path)}",
             f"echo \"$(date -u +%FT%TZ) wheel {lay.wheel_key}\" >> {q(lay.install_log)}",
             f"echo {q(lay.wheel_key)} > {q(v)}/.trainctl-wheel"]
    return _locked(lay, lines, f"[ \"$(cat {q(v)}/.trainctl-wheel 2>/dev/null)\" = {q(lay.wheel_key)} ]")


def _locked(lay: Layout, lines: list[str], done_test: str) -> str:
    """Run `lines` under the box's setup lock, re-checking `done_test` inside it.

    An earlier launch killed mid-setup may still be running its step on the box (no pty, so no
    SIGHUP); the lock makes the relaunch wait for it instead of racing it.
    """
    body = " && ".join(lines)
    held = "another launch is still setting up this box (its setup.lock is held); try again when it is done"
    return (f"set -e; exec 9>>{q(lay.home + '/setup.lock')}; "
            f"flock -w {SETUP_LOCK_WAIT_S} 9 || {{ echo {q(held)} >&2; exit 75; }}; "
            f"if {done_test}; then echo cached; else {body}; fi")


def privileged(cmd: str, needs_sudo: bool) -> str:
    """`cmd` with sudo when the login user is not root: the one place that decides how to escalate."""
    return f"sudo -n {cmd}" if needs_sudo else cmd


def folders_script(dirs: list[str], user: str, needs_sudo: bool) -> str:
    """Create `dirs` for the login user: as root they are made, then handed to the user (never left
    root-owned where the user writes later, as the AMI's root-owned /mnt/training would have them)."""
    quoted = " ".join(q(d) for d in dirs)
    if not needs_sudo:
        return f"mkdir -p {quoted}"
    return f"{privileged(f'mkdir -p {quoted}', True)} && {privileged(f'chown {q(user)} {quoted}', True)}"


def box_folders(cfg: RunConfig, lay: Layout, wheel: Wheel | None) -> list[str]:
    """Every folder under the data root that a launch writes into: trainctl's home and the staging targets."""
    from controller.box.stage import stage_targets

    home = lay.home
    dirs = [home, f"{home}/venvs", f"{home}/runs", f"{home}/wheels"]
    if wheel is not None and lay.wheel_path:
        dirs.append(lay.wheel_path.rsplit("/", 1)[0])
    for target in stage_targets(cfg.stage.model, cfg.stage.data, cfg.box.data_root):
        dirs += [target["dest"].rsplit("/", 1)[0], target["dest"]]
    return list(dict.fromkeys(dirs))


def setup_steps(facts: Facts, cfg: RunConfig, lay: Layout, wheel: Wheel | None, user: str,
                box_needs_sudo: bool) -> list[Step]:
    """Folders, wheel upload, venv, wheel install: each skipped (cached) when the facts say done."""
    steps = [Step("prepare folders", folders_script(box_folders(cfg, lay, wheel), user, box_needs_sudo))]
    if cfg.setup.mode == "current":
        steps.append(Step("check trainctl is importable",
                          f"{q(lay.python)} -c 'import agent.protocol.runstore, trainctl.cli'"))
        return steps
    if wheel is None:
        raise ValueError("venv mode needs a wheel")
    steps.append(Step("upload trainctl wheel", upload=(wheel.path, lay.wheel_path), cached=facts.wheel_uploaded))
    steps.append(Step(f"create venv {lay.plan_hash}", _venv_script(cfg, facts, lay, wheel), cached=facts.venv_ready))
    steps.append(Step(f"install trainctl {wheel.key[:12]}", _wheel_script(cfg, facts, lay),
                      cached=facts.venv_ready and facts.venv_wheel == wheel.key))
    return steps


def start_decision(active: dict | None, run_id: str, active_finished: bool = False) -> str:
    """start | already_running | busy, from the box's active-run record.

    An agent whose run already has its marker is only finishing up (its trainer has ended), so
    it does not hold the box: "tail to the end, launch the next" must not race it.
    """
    if not active or not active.get("alive"):
        return "start"
    if active.get("run_id") == run_id:
        return "already_running"
    return "start" if active_finished else "busy"


def trainer_argv(cfg: RunConfig, lay: Layout, workdir: str) -> list[str]:
    """The trainer command: as configured, or `ctl train sft --config <workdir>/train.toml --set ...`."""
    if cfg.trainer.command:
        return list(cfg.trainer.command)
    argv = [*lay.ctl, "train", "sft", "--config", f"{workdir}/train.toml"]
    for item in cfg.trainer.set:
        argv += ["--set", item]
    return argv


def agent_argv(cfg: RunConfig, lay: Layout, run_id: str, store_url: str, endpoint_url: str,
               hourly_usd: float | None = None, price_basis: str | None = None) -> list[str]:
    """`ctl agent run ... -- <trainer>` exactly as the agent's CLI takes it; with the box's hourly
    price (ops.pricing.launch_price) the agent writes the run's cost into its marker."""
    wd = lay.workdir(run_id)
    a = cfg.agent
    argv = [*lay.ctl, "agent", "run", "--run-id", run_id, "--store", store_url, "--workdir", wd,
            "--heartbeat-s", f"{a.heartbeat_s:g}", "--log-flush-s", f"{a.log_flush_s:g}",
            "--stop-poll-s", f"{a.stop_poll_s:g}"]
    if endpoint_url:
        argv += ["--endpoint-url", endpoint_url]
    if hourly_usd is not None:
        argv += ["--hourly-usd", f"{hourly_usd:g}", "--price-basis", price_basis or "on-demand"]
        if cfg.trainer.max_cost:  # a cost cap needs a price to count in
            argv += ["--max-cost", f"{cfg.trainer.max_cost:g}"]
    return [*argv, *trainer_flags(cfg), "--", *trainer_argv(cfg, lay, wd)]


def trainer_flags(cfg: RunConfig) -> list[str]:
    """run.toml's `[trainer]` progress_regex, artifacts and checkpoints as the agent's flags."""
    t, out = cfg.trainer, []
    if t.progress_regex:
        out += ["--progress-regex", t.progress_regex]
    for path in t.artifacts:
        out += ["--artifact", path]
    if t.checkpoints:
        out += ["--checkpoints", t.checkpoints]
    if t.max_runtime:
        out += ["--max-runtime", t.max_runtime]
    retries = t.oom_retries if t.oom_retries >= 0 else (0 if t.command else 2)  # on for ours, opt-in for yours
    if retries:
        out += ["--oom-retries", str(retries)]
        out += [*(["--micro-batch", str(t.micro_batch)] if t.micro_batch else []),
                *(["--grad-accum", str(t.grad_accum)] if t.grad_accum else [])]
        for arg in t.resume_args:
            out += [f"--resume-arg={arg}"]  # `=`: a flag-like value is not taken for the agent's own option
    return out


def gpu_mem_arg(gpus: list[str]) -> str | None:
    """`23028MiB` from nvidia-smi's `NAME, 23028 MiB` lines: the smallest GPU bounds the run."""
    sizes = []
    for line in gpus:
        amount = line.rsplit(",", 1)[-1].split()
        if len(amount) == 2 and amount[0].isdigit() and amount[1] == "MiB":
            sizes.append(int(amount[0]))
    return f"{min(sizes)}MiB" if sizes else None


def estimate_argv(cfg: RunConfig, lay: Layout, workdir: str, gpus: list[str]) -> list[str] | None:
    """`ctl train estimate ... --json` for the default trainer on a GPU box, else None (nothing to check)."""
    mem = gpu_mem_arg(gpus)
    if cfg.trainer.command or not cfg.trainer.config or mem is None:
        return None
    argv = [*lay.ctl, "train", "estimate", "--config", f"{workdir}/train.toml", "--gpu-mem", mem, "--json"]
    for item in cfg.trainer.set:
        argv += ["--set", item]
    return argv
