"""Config schemas and the one loading rule: dataclass defaults, then the TOML file, then `--set`.

Every layer is validated the same way (unknown keys get a did-you-mean, values are type-checked),
and nothing downstream may replace a resolved value with a constant of its own: the seeds lost
days to a trainer whose hard-coded batch size silently beat the CLI flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from agent.protocol.errors import ConfigError


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _did_you_mean(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if not close:  # a misspelt leaf under the right section still deserves a hint
        leaf = key.rsplit(".", 1)[-1]
        close = [c for c in choices if c.rsplit(".", 1)[-1] in difflib.get_close_matches(
            leaf, [c.rsplit(".", 1)[-1] for c in choices], n=3, cutoff=0.6)][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _check_value(key: str, value: Any, t, origin: str) -> Any:
    """Return `value` coerced to type `t`, or raise a one-line ConfigError."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(key, value, inner, origin)
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: {key} must be a table of keys, got {value!r}")
        obj = t()
        _apply(obj, value, origin, f"{key}.")
        return obj
    if typing.get_origin(t) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: {key} must be a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, args[0], origin) for i, v in enumerate(value)]
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t in (int, float, str, bool) and (type(value) is not t):
        raise ConfigError(f"{origin}: {key} must be {_type_name(t)}, got {value!r} ({type(value).__name__})")
    return value


def _apply(cfg, data: dict, origin: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(cfg))
    names = _field_names(type(cfg))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{origin}: unknown key '{full}'{_did_you_mean(full, _all_keys(type(cfg), prefix))}")
        t = hints[key]
        if dataclasses.is_dataclass(t):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: '{full}' is a section; write [{full}] with keys under it")
            _apply(getattr(cfg, key), value, origin, f"{full}.")
        else:
            setattr(cfg, key, _check_value(full, value, t, origin))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as TOML, else kept as a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), validate: bool = True):
    """Build `cls` from its defaults, the TOML file at `path`, then `--set` overrides, in that order;
    `validate` also runs the schema's checks that look at the disk (model and data folders)."""
    cfg = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
        _apply(cfg, data, str(p))
    for text in overrides:
        parts, value = parse_override(text)
        nested: dict = value
        for part in reversed(parts):
            nested = {part: nested}
        _apply(cfg, nested, f"--set {text}")
    if validate and hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


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
