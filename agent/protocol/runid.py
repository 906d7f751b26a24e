"""The one run-id rule, used everywhere a run id enters the program.

`<name>-YYYYMMDD-HHMMSS`: the name is letters, digits, `_` and `-` (so no `/`, no `..`, no
spaces can reach a store key or a path), and the stamp must be a real UTC date and time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from agent.protocol.errors import RunIdError

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,46}[A-Za-z0-9])?"
RUN_ID_RE = re.compile(rf"^(?P<name>{_NAME})-(?P<stamp>\d{{8}}-\d{{6}})$")
NAME_RE = re.compile(rf"^{_NAME}$")
_HINT = "run ids look like mistral-20250804-171621 (name of letters, digits, _ or -, then UTC date-time)"


def validate_run_id(run_id: str) -> str:
    """Return `run_id` unchanged if it follows the rule, else raise RunIdError saying why."""
    if not isinstance(run_id, str) or not run_id:
        raise RunIdError(f"empty run id: {_HINT}")
    m = RUN_ID_RE.fullmatch(run_id)
    if not m:
        raise RunIdError(f"invalid run id {run_id!r}: {_HINT}")
    try:
        datetime.strptime(m.group("stamp"), "%Y%m%d-%H%M%S")
    except ValueError:
        raise RunIdError(f"invalid run id {run_id!r}: {m.group('stamp')} is not a real date-time; {_HINT}") from None
    return run_id


def validate_name(name: str) -> str:
    """Check a run name (the part before the stamp)."""
    if not NAME_RE.fullmatch(name or ""):
        raise RunIdError(
            f"invalid run name {name!r}: use 1-48 letters, digits, _ or -, starting and ending with a letter or digit"
        )
    return name


def new_run_id(name: str, now: datetime | None = None) -> str:
    """A fresh run id for `name` stamped with `now` (UTC)."""
    validate_name(name)
    now = now or datetime.now(UTC)
    return f"{name}-{now.astimezone(UTC):%Y%m%d-%H%M%S}"


def run_name(run_id: str) -> str:
    """The name part of a valid run id."""
    return RUN_ID_RE.fullmatch(validate_run_id(run_id)).group("name")
