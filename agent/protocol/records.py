"""The run-store protocol's typed records (metadata, heartbeat, progress, the markers, the stop
request), read and written only through these classes, and how their values are shown.

The key layout lives in agent.protocol.keys (every key declared once there) and is re-exported
here, so `from agent.protocol import records as p` gives both `p.HEARTBEAT` and `p.Heartbeat`.

Every record carries `schema_version`; readers accept unknown fields (newer writers) and fill
missing optional ones, so an old watcher can read a newer agent's run. Timestamps are unix
seconds (`ts`, `created`, ...) with an ISO twin added for humans browsing with `aws s3 cp`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

# Every key and workdir name is declared in agent.protocol.keys; re-exported so `p.HEARTBEAT` and
# `p.Heartbeat` come from one import.
from agent.protocol.keys import (  # noqa: F401 (re-exported)
    ALERTS,
    ARTIFACTS,
    ATTEMPTS,
    CHECKPOINT_STATE,
    CHUNK_DIGITS,
    COMPLETE,
    ERROR,
    HEARTBEAT,
    HISTORY,
    INDEX,
    INDEX_DONE,
    LOG_CHUNK_TAGS,
    LOG_LATEST,
    LOGS,
    LOSS_CURVE,
    MANAGED_TAG_KEY,
    MANAGED_TAG_VALUE,
    METADATA,
    OOM_ATTEMPTS,
    ORPHANS,
    PROGRESS,
    SAMPLES,
    STOP,
    WD_AGENT_LOCK,
    WD_AGENT_PID,
    WD_ATTEMPT_FILES,
    WD_ENV,
    WD_EXIT_STATUS,
    WD_LOG,
    WD_OUTPUT,
    WD_PROGRESS,
    WD_STATE,
    WD_TRAINER_PID,
    WD_WRAPPER_PID,
    attempt_name,
    attempt_of,
    chunk_name,
    chunk_seq,
    index_done_name,
    key,
    orphan_name,
    orphan_of,
)

SCHEMA_VERSION = 1


def trainctl_version() -> str:
    """The installed trainctl's version (recorded in metadata, shown by `ctl --version`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainctl")
    except PackageNotFoundError:  # a source tree without an install
        return "0.0.0+src"


# Phases the trainer or agent reports. These make no training steps by nature, so the watcher
# gives them a longer progress timeout.
SETUP_PHASES = ("launching", "setup", "staging", "preparing_data", "loading_model")



def iso(ts: float | None) -> str | None:
    """Unix seconds as an ISO-8601 UTC string."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fmt_metric(v, spec: str = ".4f") -> str:
    """A metric as `spec`. JSON has no NaN, so a diverged loss is stored as the string "nan" (or
    "inf"): anything that is not a number is shown as it is, never crashes a table or an alert."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return format(v, spec)
    return str(v)


class RecordError(ValueError):
    """A stored record that cannot be read as its type (not JSON, wrong fields)."""


@dataclass
class Record:
    """Base of all records: dict round-trip with a schema version and ISO twins of timestamps."""

    NAME: ClassVar[str] = ""
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        for f in self.TIME_FIELDS:
            if d.get(f) is not None:
                d[f + "_iso"] = iso(d[f])
        return d

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Any):
        if not isinstance(d, dict):
            raise RecordError(f"{cls.NAME or cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - d.keys()
        if missing:
            raise RecordError(f"{cls.NAME or cls.__name__}: missing field(s) {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_bytes(cls, raw: bytes):
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(f"{cls.NAME or cls.__name__}: not JSON ({exc})") from None
        return cls.from_dict(d)


@dataclass
class Metadata(Record):
    """Who, what and where: written at launch by the controller, updated by the agent."""

    NAME: ClassVar[str] = METADATA
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("created", "updated")
    run_id: str
    created: float
    phase: str = "launching"
    updated: float | None = None
    config: dict = field(default_factory=dict)
    command: list = field(default_factory=list)
    instance_id: str | None = None
    instance_type: str | None = None
    region: str | None = None
    host: str | None = None
    git_sha: str | None = None
    agent_pid: int | None = None
    trainer_pid: int | None = None
    heartbeat_s: float = 30.0
    workdir: str | None = None
    trainctl_version: str | None = None
    # The agent's caps (agent.daemon.caps.budget): max_runtime_s, max_cost_usd, hourly_usd, started_ts.
    budget: dict | None = None
    # The agent's OOM restarts (agent.daemon.oomretry), the same list as OOM_ATTEMPTS holds.
    oom_attempts: list = field(default_factory=list)


def attempts_text(attempts: list[dict]) -> str:
    """`batch 4 (step 5) -> 2 (step 5) -> 1`: an OOM retry's sizes (Metadata.oom_attempts), with the step each reached."""
    if not attempts:
        return ""
    hops = [f"{a.get('micro_batch')} (step {a['step'] if a.get('step') is not None else '?'})" for a in attempts]
    return "batch " + " -> ".join([*hops, str(attempts[-1].get("next_micro_batch"))])


@dataclass
class Heartbeat(Record):
    """The agent's pulse, every `heartbeat_s`."""

    NAME: ClassVar[str] = HEARTBEAT
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("ts", "last_progress_ts", "last_log_ts")
    SOURCE_TRAINER: ClassVar[str] = "trainer"  # progress_source values
    SOURCE_OUTPUT: ClassVar[str] = "output"
    WHY_INTERVAL: ClassVar[str] = "interval"  # `why` values
    WHY_DEADLINE: ClassVar[str] = "deadline"
    WHY_FINAL: ClassVar[str] = "final"
    ts: float  # the box's clock when these facts were true: the watcher judges idleness against it
    seq: int
    agent_pid: int
    trainer_alive: bool
    heartbeat_s: float = 30.0
    trainer_pid: int | None = None
    phase: str | None = None
    last_progress_ts: float | None = None
    last_step: int | None = None
    host: dict = field(default_factory=dict)
    gpus: list = field(default_factory=list)
    spool_backlog_bytes: int = 0
    # Where progress comes from: SOURCE_TRAINER (the trainer's or TrainctlCallback's progress
    # file has step records), SOURCE_OUTPUT (parsed from the trainer's output), None (nothing yet).
    progress_source: str | None = None
    last_log_ts: float | None = None  # when the agent last read a new byte of the trainer's output
    # agent.daemon.cadence.Cadence.record(): step p50/p95, hung_after_s, eval/save allowances, steps
    # seen, last step ts, phase; None until enough steps were seen to learn it (the watcher then
    # keeps its configured progress timeout).
    cadence: dict | None = None
    oom_attempts: list = field(default_factory=list)  # the agent's OOM restarts so far (read every sweep)
    # Why this beat was written: WHY_INTERVAL (every heartbeat_s), WHY_DEADLINE (the run's own published
    # hang deadline, `cadence`, just passed without a step: written at once, not at the next interval, so
    # the next sweep sees the hang), WHY_FINAL (the trainer ended). None: an older agent.
    why: str | None = None


@dataclass
class Progress(Record):
    """The latest training step as the trainer reported it, plus the agent's ETA."""

    NAME: ClassVar[str] = PROGRESS
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("ts",)
    ts: float
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    phase: str | None = None
    eval_loss: float | None = None  # the latest evaluation's loss


@dataclass
class ErrorMarker(Record):
    """`_error`: the run failed; cause and remediation for the on-call engineer."""

    NAME: ClassVar[str] = ERROR
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("ts",)
    ts: float
    cause: str
    remediation: str
    summary: str = ""
    exit_code: int | None = None
    signal: str | None = None
    phase: str | None = None
    duration_s: float | None = None
    last_step: int | None = None
    last_loss: float | None = None
    log_tail: list = field(default_factory=list)
    checkpoint: str | None = None  # store location of the verified checkpoint to resume from (spot interruption)
    cost_usd: float | None = None  # what the run cost until it failed (agent runtime x the box's hourly price)
    price_basis: str | None = None  # "spot" or "on-demand": which hourly price cost_usd used


@dataclass
class CompleteMarker(Record):
    """`_complete`: written only after every declared final artifact was verified in the store."""

    NAME: ClassVar[str] = COMPLETE
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("ts",)
    ts: float
    duration_s: float
    final_metrics: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # [{"name", "uri", "size", "files"}]
    artifacts_verified: int | None = None  # how many declared artifacts verified (None: an older agent)
    reason: str = ""  # in words: "training finished; 3 artifacts verified" / "...; no artifacts declared"
    oom_attempts: list = field(default_factory=list)  # OOM restarts before it completed (agent.daemon.oomretry)
    cost_usd: float | None = None  # agent runtime x the box's hourly price, as the controller passed it
    price_basis: str | None = None  # "spot" or "on-demand": which hourly price cost_usd used


@dataclass
class StopRequest(Record):
    """`control/stop`: the controller asks the agent to stop the trainer gracefully."""

    NAME: ClassVar[str] = STOP
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("ts",)
    ts: float
    requested_by: str = ""
    reason: str = "stopped by user"
