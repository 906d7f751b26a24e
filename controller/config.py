"""`run.toml`: the launch configuration, validated before anything touches AWS.

The schema is a set of dataclasses, one per TOML table. Validation walks the raw TOML dict and
collects every mistake (unknown key with a did-you-mean, wrong type, out-of-range value) so the
user fixes them all in one pass. Flags are applied to the raw dict before validation, so a bad
flag gets the same one-line error as a bad file entry, and the resolved config (file + flags +
defaults) is what gets recorded in metadata.json and passed on.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol.errors import ConfigError


def _f(default, *, min=None, max=None, choices=None, help=""):
    meta = {"min": min, "max": max, "choices": choices, "help": help}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class InstanceCfg:
    id: str = _f("", help="EC2 instance id (ctl launch --existing)")
    region: str = _f("", help="AWS region; empty = the usual AWS settings")
    profile: str = _f("", help="AWS profile; empty = the usual AWS settings")
    endpoint_url: str = _f("", help="EC2 endpoint override (S3-compatible clouds, tests)")
    start_if_stopped: bool = _f(True)
    allow_no_gpu: bool = _f(False)
    address: str = _f("public", choices=("public", "private"))
    wait_timeout_s: float = _f(600.0, min=1, max=7200)
    poll_s: float = _f(5.0, min=0.05, max=300)


@dataclass
class SshCfg:
    user: str = _f("", help="empty = ssh_config User, else ubuntu")
    key: str = _f("", help="private key file")
    config: str = _f("", help="ssh_config file; empty = ~/.ssh/config when present")
    port: int = _f(0, min=0, max=65535)
    connect_timeout_s: float = _f(10.0, min=0.5, max=300)
    wait_timeout_s: float = _f(300.0, min=1, max=3600)
    command_timeout_s: float = _f(3600.0, min=1, max=86400)


@dataclass
class BoxCfg:
    data_root: str = _f("/mnt/training")
    require_mount: bool = _f(True, help="data_root must be a mounted volume")
    volume_device: str = _f("", help="block device of the data volume; empty = auto-detect")
    min_free_gb: float = _f(50.0, min=0, max=100000)
    min_python: str = _f("3.10")
    require_gpu: bool = _f(True)
    autostop_action: str = _f("", help="command the autostop companion runs when idle; empty = shutdown -h now "
                                       "(stops the instance: stop, not terminate, so the volume stays)")
    autostop_check_s: float = _f(30.0, min=0.05, max=3600, help="seconds between the companion's idle checks")


@dataclass
class SetupCfg:
    mode: str = _f("venv", choices=("venv", "current"), help="current = use `python` as is (it has trainctl)")
    python: str = _f("python3", help="interpreter that seeds the venv (a DLAMI's PyTorch python)")
    system_site_packages: bool = _f(True, help="reuse the seed interpreter's packages (its PyTorch)")
    extras: list[str] = _f(["agent", "train"])
    install_deps: bool = _f(True)
    pip_args: list[str] = _f([])
    commands: list[str] = _f([], help="extra shell commands run once per venv, after install")
    wheel: str = _f("", help="prebuilt trainctl wheel; empty = build from this source tree")


@dataclass
class StoreCfg:
    url: str = _f("", help="s3://bucket/prefix (env TRAINCTL_STORE)")
    endpoint_url: str = _f("", help="S3 endpoint override (env TRAINCTL_S3_ENDPOINT)")
    region: str = _f("")
    forward_aws_credentials: bool = _f(False, help="pass this shell's AWS keys to the box (no instance role)")


@dataclass
class StageCfg:
    model: str = _f("", help="s3:// prefix staged to <data_root>/models/<name>")
    data: str = _f("", help="s3:// prefix staged to <data_root>/datasets/<name>")
    workers: int = _f(8, min=1, max=64)


@dataclass
class AgentCfg:
    heartbeat_s: float = _f(30.0, min=0.1, max=3600)
    log_flush_s: float = _f(2.0, min=0.05, max=600)
    stop_poll_s: float = _f(10.0, min=0.05, max=600)


@dataclass
class TrainerCfg:
    command: list[str] = _f([], help="empty = ctl train sft --config <config>")
    config: str = _f("", help="local train.toml, copied into the run's folder on the box")
    set: list[str] = _f([], help="key=value overrides passed to the trainer")
    env: dict[str, str] = _f({})


@dataclass
class RunConfig:
    name: str = _f("run")
    autostop: str = _f("15m", help="stop the box after this long with no active run and no interactive SSH "
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


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig) if f.name not in ("name", "autostop")}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list[str]: "a list of strings", dict[str, str]: "a table of strings"}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(where: str, f: dataclasses.Field, value) -> tuple[Any, str | None]:
    """(coerced value, error line or None) for one key."""
    typ = {"str": str, "int": int, "float": float, "bool": bool}.get(f.type, None)
    if typ is None:
        typ = list[str] if f.type.startswith("list") else dict[str, str]
    bad = f"{where}: expected {_TYPE_WORDS[typ]}, got {value!r}"
    if typ is bool:
        if not isinstance(value, bool):
            return None, bad
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, bad
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, bad
        value = float(value)
    elif typ is str:
        if not isinstance(value, str):
            return None, bad
    elif typ == list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, bad
    elif not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None, bad
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        return None, f"{where}: {value!r} is not one of {', '.join(m['choices'])}"
    if m.get("min") is not None and value < m["min"]:
        return None, f"{where}: {value} is below the minimum {m['min']}"
    if m.get("max") is not None and value > m["max"]:
        return None, f"{where}: {value} is above the maximum {m['max']}"
    return value, None


def _build(cls, raw: dict, prefix: str, errors: list[str]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        where = f"{prefix}{k}"
        if k not in fields:
            errors.append(f"unknown key {where!r}{_suggest(k, fields)}")
            continue
        if k in SECTIONS and cls is RunConfig:
            if not isinstance(v, dict):
                errors.append(f"{where}: expected a table [{k}], got {v!r}")
                continue
            kwargs[k] = _build(SECTIONS[k], v, f"{k}.", errors)
            continue
        val, err = _check_value(where, fields[k], v)
        if err:
            errors.append(err)
        else:
            kwargs[k] = val
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    """`box.min_free_gb=20` -> ("box.min_free_gb", 20.0); values are TOML, bare words strings."""
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set {item!r}: use --set section.key=value, e.g. --set box.min_free_gb=20")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def apply_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A copy of `raw` with dotted keys set; None values (flags not given) are skipped."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        parts = dotted.split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def load_raw(path: str | Path | None) -> dict:
    """The TOML file as a dict ({} when no file); unreadable or invalid TOML is a ConfigError."""
    if not path:
        return {}
    p = Path(path)
    try:
        return anchor_paths(tomllib.loads(p.read_text()), p.resolve().parent)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


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


def resolve(raw: dict, overrides: dict[str, Any] | None = None, source: str = "run.toml") -> RunConfig:
    """Validate file + flag values into a RunConfig; every mistake is one line of the ConfigError."""
    merged = apply_overrides(raw, overrides or {})
    errors: list[str] = []
    cfg = _build(RunConfig, merged, "", errors)
    errors += semantic_errors(cfg) if not errors else []
    if errors:
        raise ConfigError(f"{len(errors)} problem(s) in {source} / flags:\n  " + "\n  ".join(errors))
    return cfg


def semantic_errors(cfg: RunConfig) -> list[str]:
    """Cross-field rules the per-key checks cannot see."""
    errs = []
    from agent.protocol.runid import NAME_RE

    if not NAME_RE.match(cfg.name):
        errs.append(f"name: {cfg.name!r} must be 1-48 letters, digits, _ or -")
    try:
        from agent.protocol.durations import parse_duration

        parse_duration(cfg.autostop, what="autostop", allow_never=True)
    except ConfigError as exc:
        errs.append(str(exc))
    if not cfg.box.data_root.startswith("/"):
        errs.append(f"box.data_root: {cfg.box.data_root!r} must be an absolute path on the box")
    for label, uri in (("stage.model", cfg.stage.model), ("stage.data", cfg.stage.data)):
        if uri and not uri.startswith("s3://"):
            errs.append(f"{label}: {uri!r} must be an s3:// prefix")
    for item in cfg.trainer.set:
        if "=" not in item:
            errs.append(f"trainer.set: {item!r} must look like key=value")
    try:
        tuple(int(x) for x in cfg.box.min_python.split("."))
    except ValueError:
        errs.append(f"box.min_python: {cfg.box.min_python!r} must look like 3.10")
    if not cfg.trainer.command and not cfg.trainer.config:
        errs.append("trainer: set trainer.config (a train.toml) or trainer.command")
    return errs


def load(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, merge flags, validate."""
    return resolve(load_raw(path), overrides, str(path) if path else "defaults")
