"""The one config walker: run.toml, train.toml and data.toml are all checked by this module.

A schema is a tree of dataclasses, one per TOML table, whose fields carry their limits
(`setting(default, min=, max=, choices=, help=)`). `build` starts from the defaults and walks
each layer of raw TOML data in order (the file, then each flag), collecting every mistake as
one line `<origin>: <key>: what is wrong` (unknown keys: `<origin>: unknown key '<key>'` with
one did-you-mean over every key of every section), then runs the schema's own cross-field
`check`. Nothing stops at the first error: the user fixes them all in one pass.

It lives in train/ because the trainer must not import the controller; the controller's
run.toml uses it from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, NamedTuple

from agent.protocol.errors import ConfigError
from train import keyhints

CUTOFF = 0.6  # the difflib ratio a did-you-mean needs; one value for every file and section
_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def setting(default, *, min=None, max=None, choices=None, help=""):
    """A schema field: its default and the limits the walker enforces (and the reference prints)."""
    meta = {"min": min, "max": max, "choices": choices, "help": help}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Problem(NamedTuple):
    """A cross-field mistake found by a schema's `check`: the key it is about and what is wrong."""

    key: str
    message: str


class Override(NamedTuple):
    """One `--set SECTION.KEY=VALUE`: the dotted key as typed and its value read as TOML."""

    key: str
    value: Any

    @property
    def path(self) -> list[str]:
        return self.key.split(".")

    def as_table(self) -> dict:
        """{"a": {"b": value}} for key "a.b": a layer the walker can apply."""
        return nest({self.key: self.value})


def parse_override(text: str, example: str = "train.learning_rate=1e-4") -> Override:
    """`box.min_free_gb=20` -> Override("box.min_free_gb", 20); values are TOML, bare words strings."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key=value (SECTION.KEY=VALUE), e.g. --set {example}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return Override(key, value)


def nest(dotted: dict[str, Any]) -> dict:
    """{"a.b": 1, "a.c": None} -> {"a": {"b": 1}}: dotted flag values as one layer (None = not given)."""
    out: dict = {}
    for key, value in dotted.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return out


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict; a missing file or invalid TOML is a one-line ConfigError."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None


def _table_item(t):
    """The dataclass of a list-of-tables field (`[[sources]]`), else None."""
    args = typing.get_args(t)
    if typing.get_origin(t) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def all_keys(cls, prefix: str = "") -> list[str]:
    """Every section and every dotted leaf key of a schema (list-of-tables items without an index)."""
    keys = []
    for name, t in typing.get_type_hints(cls).items():
        sub = t if dataclasses.is_dataclass(t) else _table_item(t)
        if sub is not None:
            keys += [f"{prefix}{name}", *all_keys(sub, f"{prefix}{name}.")]
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _closeness(key: str, candidate: str) -> tuple[float, float]:
    """How close `candidate` is to the unknown `key`: in the key's own section the whole dotted
    path is compared (a typo in the leaf), elsewhere only the leaf names (a key in the wrong
    section); the whole-path ratio breaks ties."""
    parent, _, leaf = key.rpartition(".")
    c_parent, _, c_leaf = candidate.rpartition(".")
    whole = _ratio(key, candidate)
    return (whole if c_parent == parent else _ratio(leaf, c_leaf), whole)


def _elsewhere(plain: str, root, own: list[str]) -> str:
    """The hint for a leaf no section of this file has: another tool's name for one of our keys,
    or a key of another config file (which says where it lives); '' when neither."""
    leaf = plain.rpartition(".")[2]
    target = keyhints.HABITS.get(leaf)
    if target in own:
        return f" (did you mean '{target}'?)"
    for label, other in keyhints.SCHEMAS.items():
        if other is root:
            continue
        keys = all_keys(other)
        hit = target if target in keys else next((k for k in keys if k.rpartition(".")[2] == leaf), None)
        if hit and any(k.startswith(hit + ".") for k in keys):
            return f" ([{hit}] is a section of {label})"
        if hit:
            return f" ('{leaf}' lives in {label} as '{hit}'{keyhints.AFTER_MOVE.get(label, '')})"
    return ""


def did_you_mean(key: str, root) -> str:
    """` (did you mean 'x.y'?)` for the closest key in any section of `root`'s schema; for a name
    this file has nowhere, another tool's habit or the file where it lives; else ''."""
    plain = re.sub(r"\[\d+\]", "", key)
    own = all_keys(root)
    leaf = plain.rpartition(".")[2]
    if not any(c.rpartition(".")[2] == leaf for c in own if c != plain) and (moved := _elsewhere(plain, root, own)):
        return moved
    scored = [(_closeness(plain, c), c) for c in own if c != plain]
    (score, _), best = max(scored, key=lambda sc: sc[0], default=((0.0, 0.0), ""))
    if score < CUTOFF:
        return ""
    item = re.match(r"(\w+)(\[\d+\])\.", key)  # keep the user's list index: sources[2].path
    if item and best.startswith(item.group(1) + "."):
        best = item.group(1) + item.group(2) + best[len(item.group(1)):]
    return f" (did you mean '{best}'?)"


def _coerce(t, value) -> tuple[bool, Any]:
    """(fits, value converted) for one leaf: ints are accepted as floats, bools never as numbers."""
    if t is bool or t is str:
        return isinstance(value, t), value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    args = typing.get_args(t)
    if typing.get_origin(t) is list and isinstance(value, list):
        items = [_coerce(args[0], v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if typing.get_origin(t) is dict and isinstance(value, dict):
        items = {k: _coerce(args[1], v) for k, v in value.items()}
        return all(isinstance(k, str) and ok for k, (ok, _) in items.items()), {k: v for k, (_, v) in items.items()}
    return False, value


def _word(t) -> str:
    args = typing.get_args(t)
    if typing.get_origin(t) is list:
        return f"a list of {_PLURALS.get(args[0], 'values')}"
    if typing.get_origin(t) is dict:
        return f"a table of {_PLURALS.get(args[1], 'values')}"
    return _WORDS.get(t, str(t))


def _limits(f: dataclasses.Field, value) -> str | None:
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        return f"{value!r} is not one of {', '.join(m['choices'])}"
    if m.get("min") is not None and value < m["min"]:
        return f"{value} is below the minimum {m['min']}"
    if m.get("max") is not None and value > m["max"]:
        return f"{value} is above the maximum {m['max']}"
    return None


class _Walk:
    """One build: the errors so far, the keys that had one, and which layer set each key."""

    def __init__(self, root):
        self.root, self.lines, self.bad, self.origins = root, [], set(), {}

    def fail(self, origin: str, key: str, message: str) -> None:
        self.lines.append(f"{origin}: {message}")
        self.bad.add(key)

    def apply(self, obj, data: dict, origin: str, prefix: str = "") -> None:
        hints, fields = typing.get_type_hints(type(obj)), {f.name: f for f in dataclasses.fields(obj)}
        for name, value in data.items():
            key = f"{prefix}{name}"
            if name not in fields:
                self.fail(origin, key, f"unknown key '{key}'{did_you_mean(key, self.root)}")
                continue
            t, item = hints[name], _table_item(hints[name])
            if dataclasses.is_dataclass(t):
                if not isinstance(value, dict):
                    self.fail(origin, key, f"{key}: expected a table [{key}], got {value!r}")
                    continue
                self.apply(getattr(obj, name), value, origin, f"{key}.")
            elif item is not None:
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    self.fail(origin, key, f"{key}: expected a list of tables [[{key}]], got {value!r}")
                    continue
                items = [item() for _ in value]
                for i, (obj_i, raw_i) in enumerate(zip(items, value, strict=True)):
                    self.apply(obj_i, raw_i, origin, f"{key}[{i}].")
                setattr(obj, name, items)
            else:
                ok, value = _coerce(t, value)
                wrong = _limits(fields[name], value) if ok else f"expected {_word(t)}, got {value!r}"
                if wrong:
                    self.fail(origin, key, f"{key}: {wrong}")
                    continue
                setattr(obj, name, value)
            self.origins[key] = origin

    def origin_of(self, key: str, default: str) -> str:
        while key:
            if key in self.origins:
                return self.origins[key]
            key = re.sub(r"(\[\d+\]|\.?[^.\[]+)$", "", key)
        return default

    def related_to_bad(self, key: str) -> bool:
        return any(b == key or b.startswith((key + ".", key + "[")) or key.startswith(b + ".") for b in self.bad)


def build(cls, layers: list[tuple[str, dict]], *, source: str = "defaults", disk: bool = True,
          errors: list[str] | tuple = ()):
    """`cls` from its defaults and each (origin, raw TOML dict) layer in order, then `cls.check(disk)`.

    `source` names keys no layer set (the file, or "defaults"); `errors` are lines found before
    the walk (a malformed --set). Every mistake is one line: one raises a one-line ConfigError,
    several raise "N problem(s):" and a line each. A check's problem about a key that already
    has an error is not repeated."""
    walk = _Walk(cls)
    walk.lines += list(errors)
    cfg = cls()
    for origin, data in layers:
        walk.apply(cfg, data, origin)
    for key, message in cfg.check(disk) if hasattr(cfg, "check") else ():
        if not walk.related_to_bad(key):
            walk.lines.append(f"{walk.origin_of(key, source)}: {key}: {message}")
    if len(walk.lines) == 1:
        raise ConfigError(walk.lines[0])
    if walk.lines:
        raise ConfigError(f"{len(walk.lines)} problem(s):\n  " + "\n  ".join(walk.lines))
    return cfg
