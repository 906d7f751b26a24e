"""Loading train.toml and data.toml: dataclass defaults, then the TOML file, then each `--set`.

Every layer goes through the one config walker (`train.schema_walk`, also used for run.toml):
unknown keys get a did-you-mean, values are type- and range-checked, and every mistake in the
file and the flags is reported together. Nothing downstream may replace a resolved value with
a constant of its own: the seeds lost days to a trainer whose hard-coded batch size silently
beat the CLI flag.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.protocol.errors import ConfigError
from train.schema_walk import Override, build, parse_override, read_toml

__all__ = ["Override", "load_config", "parse_override", "to_dict", "to_toml"]


def load_config(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), validate: bool = True):
    """Build `cls` from its defaults, the TOML file at `path`, then `--set` overrides, in that order;
    `validate` also runs the schema's checks that look at this machine (model and data folders, env)."""
    layers, errors = [], []
    if path is not None:
        layers.append((str(path), read_toml(path)))
    for text in overrides:
        try:
            layers.append((f"--set {text}", parse_override(text).as_table()))
        except ConfigError as exc:
            errors.append(str(exc))
    return build(cls, layers, source=str(path) if path is not None else "defaults", disk=validate, errors=errors)


def to_dict(cfg) -> dict:
    """The resolved config as plain data (what is printed and saved with the adapter)."""
    return dataclasses.asdict(cfg)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(data: dict, prefix: str = "") -> str:
    """Serialise a resolved config (nested dicts of scalars/lists, lists of tables) as TOML."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                tables.append((f"[{k}]", item))
        elif v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"[{prefix}{k[1:-1]}]" if k.startswith("[") else f"{prefix}{k}"
        out += f"\n[{name}]\n" + to_toml(v, f"{prefix}{k.strip('[]')}.")
    return out
