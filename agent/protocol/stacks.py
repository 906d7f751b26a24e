"""Where a provisioned stack keeps its facts: one truth for infra, which writes them, and for the
parts that reuse them without importing infra (the layers forbid it), such as `ctl watch` taking
its events queue from the stack's `events_queue` output.

`ctl provision` saves Terraform's outputs as `$TRAINCTL_HOME/infra/<stack>/outputs.json`
(default ~/.trainctl) after every apply; `ctl destroy` removes the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from agent.protocol.errors import ConfigError
from agent.protocol.store import DEFAULT_HOME_ENV

OUTPUTS = "outputs.json"
DEFAULT_STACK = "default"


def state_home() -> Path:
    """ctl's state folder: $TRAINCTL_HOME, else ~/.trainctl."""
    return Path(os.environ.get(DEFAULT_HOME_ENV) or Path.home() / ".trainctl")


def stack_dir(stack: str = DEFAULT_STACK, workdir: str | os.PathLike | None = None) -> Path:
    """Where a stack's module copy, state and saved outputs live."""
    if workdir:
        return Path(workdir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", stack):
        raise ConfigError(f"stack name {stack!r} must be letters, digits, '-' or '_' (it names a folder)")
    return state_home() / "infra" / stack


def outputs_path(stack: str = DEFAULT_STACK) -> Path:
    """The saved outputs file of `stack` (it may not exist)."""
    return stack_dir(stack) / OUTPUTS


def saved_outputs(stack: str = DEFAULT_STACK) -> dict | None:
    """The outputs `ctl provision` saved for `stack`, or None when it has none (never provisioned,
    destroyed). A file that is not a JSON object is one ConfigError naming it."""
    path = outputs_path(stack)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); run `ctl provision` again or delete it") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a JSON object; run `ctl provision` again or delete it")
    return doc
