"""`run.toml`: the launch configuration, validated before anything touches AWS.

The schema is a set of dataclasses, one per TOML table, checked by the one config walker
(`train.schema_walk`, which train.toml and data.toml use too): every mistake (unknown key with
a did-you-mean, wrong type, out-of-range value, cross-field rule) is reported in one pass. The
file is one layer and the flags another, so a bad flag gets the same one-line error as a bad
file entry, and the resolved config (defaults + file + flags) is what gets recorded in
metadata.json and passed on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol.errors import ConfigError
from train import keyhints
from train.schema_walk import Override, Problem, build, nest, read_toml, setting
from train.schema_walk import parse_override as _parse_override


@dataclass
class InstanceCfg:
    id: str = setting("", help="EC2 instance id (ctl launch --existing)")
    region: str = setting("", help="AWS region; empty = the usual AWS settings")
    profile: str = setting("", help="AWS profile; empty = the usual AWS settings")
    endpoint_url: str = setting("", help="EC2 endpoint override (S3-compatible clouds, tests)")
    start_if_stopped: bool = setting(True)
    allow_no_gpu: bool = setting(False)
    address: str = setting("public", choices=("public", "private"))
    wait_timeout_s: float = setting(600.0, min=1, max=7200)
    poll_s: float = setting(5.0, min=0.05, max=300)


@dataclass
class SshCfg:
    user: str = setting("", help="empty = ssh_config User, else ubuntu")
    key: str = setting("", help="private key file")
    config: str = setting("", help="ssh_config file; empty = ~/.ssh/config when present")
    port: int = setting(0, min=0, max=65535)
    connect_timeout_s: float = setting(10.0, min=0.5, max=300)
    wait_timeout_s: float = setting(300.0, min=1, max=3600)
    command_timeout_s: float = setting(3600.0, min=1, max=86400)


@dataclass
class BoxCfg:
    data_root: str = setting("/mnt/training")
    require_mount: bool = setting(True, help="data_root must be a mounted volume")
    volume_device: str = setting("", help="block device of the data volume; empty = auto-detect")
    min_free_gb: float = setting(50.0, min=0, max=100000)
    min_python: str = setting("3.10")
    require_gpu: bool = setting(True)
    autostop_action: str = setting("", help="command the autostop companion runs when idle; empty = shutdown -h now "
                                       "(stops the instance: stop, not terminate, so the volume stays)")
    autostop_check_s: float = setting(30.0, min=0.05, max=3600, help="seconds between the companion's idle checks")


@dataclass
class SetupCfg:
    mode: str = setting("venv", choices=("venv", "current"), help="current = use `python` as is (it has trainctl)")
    python: str = setting("python3", help="interpreter that seeds the venv (a DLAMI's PyTorch python)")
    system_site_packages: bool = setting(True, help="reuse the seed interpreter's packages (its PyTorch)")
    extras: list[str] = setting(["agent", "train"])
    install_deps: bool = setting(True)
    pip_args: list[str] = setting([])
    commands: list[str] = setting([], help="extra shell commands run once per venv, after install")
    wheel: str = setting("", help="prebuilt trainctl wheel; empty = build from this source tree")


@dataclass
class StoreCfg:
    url: str = setting("", help="s3://bucket/prefix (env TRAINCTL_STORE)")
    endpoint_url: str = setting("", help="S3 endpoint override (env TRAINCTL_S3_ENDPOINT)")
    region: str = setting("")
    forward_aws_credentials: bool = setting(False, help="pass this shell's AWS keys to the box (no instance role)")


@dataclass
class StageCfg:
    model: str = setting("", help="s3:// prefix staged to <data_root>/models/<name>")
    data: str = setting("", help="s3:// prefix staged to <data_root>/datasets/<name>")
    workers: int = setting(8, min=1, max=64)


@dataclass
class AgentCfg:
    heartbeat_s: float = setting(30.0, min=0.1, max=3600)
    log_flush_s: float = setting(2.0, min=0.05, max=600)
    stop_poll_s: float = setting(10.0, min=0.05, max=600)


@dataclass
class TrainerCfg:
    command: list[str] = setting([], help="empty = ctl train sft --config <config>")
    config: str = setting("", help="local train.toml, copied into the run's folder on the box")
    set: list[str] = setting([], help="key=value overrides passed to the trainer")
    env: dict[str, str] = setting({})
    progress_regex: str = setting("", help="read progress from output lines matching this regex (named groups step, "
                                           "total, loss, lr); HF/TRL/axolotl logs and tqdm bars need none")
    artifacts: list[str] = setting([], help="final outputs (relative to the trainer's output dir TRAINCTL_OUTPUT_DIR, "
                                        "or absolute): uploaded and verified before _complete; missing = failed")
    checkpoints: str = setting("", help="folder of HF-style checkpoint-N folders (relative to the output dir, or "
                                     "absolute): each is uploaded once complete, for --resume")
    max_runtime: str = setting("", help="runtime cap (90m, 12h): the trainer is stopped gracefully (checkpoint first) "
                                     "and the run fails with cause runtime_cap; empty = none")
    oom_retries: int = setting(-1, min=-1, max=10, help="after cuda_oom, restart at half the micro-batch and twice "
                               "the accumulation from the newest checkpoint, this many times; -1 = 2 for ctl train "
                               "sft, 0 for your own command (which needs micro_batch, grad_accum and resume_args)")
    micro_batch: int = setting(0, min=0, help="your own trainer's micro-batch, for oom_retries (it gets the new one "
                                         "in TRAINCTL_MICRO_BATCH); 0 = it reports it in its progress file")
    grad_accum: int = setting(0, min=0, help="your own trainer's gradient accumulation, for oom_retries (the new one "
                                        "in TRAINCTL_GRAD_ACCUM)")
    resume_args: list[str] = setting([], help="appended to your own trainer's command on an OOM restart: its resume "
                                          "flag, e.g. [\"--resume_from_checkpoint\", \"latest\"]")
    max_cost: float = setting(0.0, min=0, max=1e6, help="spend cap in USD at the box's hourly price: stopped "
                                                     "gracefully, cause cost_cap; 0 = none; not enforced where "
                                                     "the box has no known price (--local, --host)")


@dataclass
class RunConfig:
    name: str = setting("run")
    autostop: str = setting("15m", help="stop the box after this long with no active run and no interactive SSH "
                                   "session (30s, 15m, 2h); never = off")
    instance: InstanceCfg = field(default_factory=InstanceCfg)
    ssh: SshCfg = field(default_factory=SshCfg)
    box: BoxCfg = field(default_factory=BoxCfg)
    setup: SetupCfg = field(default_factory=SetupCfg)
    store: StoreCfg = field(default_factory=StoreCfg)
    stage: StageCfg = field(default_factory=StageCfg)
    agent: AgentCfg = field(default_factory=AgentCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, disk: bool = True) -> list[Problem]:
        """The walker's hook: run.toml's cross-field rules (none look at this machine)."""
        return semantic_errors(self)


def parse_override(item: str) -> Override:
    """`box.min_free_gb=20` -> Override("box.min_free_gb", 20): the one `--set` parser, run.toml's example."""
    return _parse_override(item, example="box.min_free_gb=20")


def load_raw(path: str | Path | None) -> dict:
    """The TOML file as a dict ({} when no file); unreadable or invalid TOML is a ConfigError."""
    if not path:
        return {}
    p = Path(path)
    return anchor_paths(read_toml(p), p.resolve().parent)


# Local files named in run.toml are relative to the file, as users expect; flags stay cwd-relative.
LOCAL_PATH_KEYS = (("ssh", "key"), ("ssh", "config"), ("setup", "wheel"), ("trainer", "config"))


def anchor_paths(raw: dict, base: Path) -> dict:
    """A copy of `raw` with relative local-file paths made relative to `base` (the run.toml folder)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, key in LOCAL_PATH_KEYS:
        val = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(val, str) and val and not val.startswith(("/", "~")):
            out[section][key] = str(base / val)
    return out


# The one did-you-mean knows every file's keys: a train.toml key in run.toml says where it lives.
keyhints.register("run.toml", RunConfig)
import train.schemas  # noqa: E402,F401  (registers train.toml and data.toml)


def resolve(raw: dict, overrides: dict[str, Any] | None = None, source: str = "run.toml") -> RunConfig:
    """Validate the file, then the flag values (dotted keys; None = flag not given), into a RunConfig;
    every mistake in either is one line of the ConfigError."""
    layers = [(source, raw)]
    if flags := nest(overrides or {}):
        layers.append(("flags", flags))
    return build(RunConfig, layers, source=source)


def semantic_errors(cfg: RunConfig) -> list[Problem]:
    """Cross-field rules the per-key checks cannot see."""
    from agent.protocol.durations import parse_duration
    from agent.protocol.runid import NAME_RE

    errs = []
    if not NAME_RE.match(cfg.name):
        errs.append(Problem("name", f"{cfg.name!r} must be 1-48 letters, digits, _ or -"))
    try:
        parse_duration(cfg.autostop, what="autostop", allow_never=True)
    except ConfigError as exc:
        errs.append(Problem("autostop", str(exc).removeprefix("autostop: ")))
    if not cfg.box.data_root.startswith("/"):
        errs.append(Problem("box.data_root", f"{cfg.box.data_root!r} must be an absolute path on the box"))
    for label, uri in (("stage.model", cfg.stage.model), ("stage.data", cfg.stage.data)):
        if uri and not uri.startswith("s3://"):
            errs.append(Problem(label, f"{uri!r} must be an s3:// prefix"))
    for item in cfg.trainer.set:
        if "=" not in item:
            errs.append(Problem("trainer.set", f"{item!r} must look like key=value"))
    try:
        tuple(int(x) for x in cfg.box.min_python.split("."))
    except ValueError:
        errs.append(Problem("box.min_python", f"{cfg.box.min_python!r} must look like 3.10"))
    if cfg.trainer.progress_regex:
        import re

        try:
            re.compile(cfg.trainer.progress_regex)
        except re.error as exc:
            errs.append(Problem("trainer.progress_regex", f"{cfg.trainer.progress_regex!r} does not compile: {exc}"))
    if cfg.trainer.max_runtime:
        try:
            if not parse_duration(cfg.trainer.max_runtime, what="trainer.max_runtime"):
                errs.append(Problem("trainer.max_runtime", "must be above 0 (leave it empty for no cap)"))
        except ConfigError as exc:
            errs.append(Problem("trainer.max_runtime", str(exc).removeprefix("trainer.max_runtime: ")))
    if cfg.trainer.command and cfg.trainer.oom_retries > 0 and not cfg.trainer.resume_args:
        errs.append(Problem("trainer.oom_retries", "an OOM restart of your own trainer needs trainer.resume_args (its "
                            "resume flag); it reads the new sizes from TRAINCTL_MICRO_BATCH / TRAINCTL_GRAD_ACCUM"))
    if not cfg.trainer.command and not cfg.trainer.config:
        errs.append(Problem("trainer", "set trainer.config (a train.toml) or trainer.command"))
    return errs


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, merge flags, validate."""
    return resolve(load_raw(path), overrides, str(path) if path else "defaults")
