"""Human durations, one grammar and one style for every part: settings, flags, tables and alerts.

Read: a number (seconds), or unit parts `90s`, `15m`, `4h`, `1d`, `2w`, `250ms`, combined as
`1h30m`; `never` (or `off`, `none`, `0`) where a setting can be turned off. Written: the two
largest units, the second zero-padded (`42s`, `14m 03s`, `2h 05m`, `1d 01h`), `-` when unknown.
"""

from __future__ import annotations

import re

from agent.protocol.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Words that turn a setting off where that is allowed (`autostop = "never"`, `--orphan-after off`).
NEVER = ("never", "off", "none", "0")


def parse_duration(text: str | float | int, *, what: str = "duration", allow_never: bool = False) -> float | None:
    """Seconds in `text` (a number means seconds); None for `never` when allowed.

    A ConfigError naming `what` (the flag, setting or env var as the user typed it) and the
    accepted forms otherwise.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{what} must not be negative, got {text}")
        return float(text)
    s = str(text).strip().lower()
    if allow_never and s in NEVER:
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


def fmt_duration(seconds: float | None, fine: bool = False) -> str:
    """`42s`, `14m 03s`, `2h 05m`, `1d 01h`; `-` when unknown; negative counts as 0. With `fine`,
    under 10 s keeps two significant digits (`9.8s`, `0.25s`): a step time, not an age."""
    if seconds is None:
        return "-"
    if fine and 0 < seconds < 10:
        return f"{seconds:.2g}s"
    s = int(max(0.0, seconds))  # whole seconds, rounded down: "no heartbeat for 59s" until it is 1m
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
