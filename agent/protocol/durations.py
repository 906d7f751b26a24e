"""Human durations for settings and flags: `90s`, `15m`, `4h`, `1d`, `1h30m`, or `never`."""

from __future__ import annotations

import re

from agent.protocol.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int, *, what: str = "duration", allow_never: bool = False) -> float | None:
    """Seconds in `text` (a number means seconds); None for `never` when allowed."""
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"{what} must not be negative, got {text}")
        return float(text)
    s = str(text).strip().lower()
    if allow_never and s in ("never", "off", "0"):
        return None
    try:
        value = float(s)
        if value >= 0:
            return value
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos and s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        hint = " or 'never'" if allow_never else ""
        raise ConfigError(f"{what}: cannot read {text!r} as a duration; use e.g. 90s, 15m, 4h, 1d{hint}")
    return total


def fmt_duration(seconds: float | None) -> str:
    """`2h 05m`, `14m 03s`, `42s`; `-` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(max(0.0, seconds)))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{sec}s"
