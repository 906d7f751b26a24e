"""The run-store protocol: key layout and typed records, read and written only here.

Every record carries `schema_version`; readers accept unknown fields (newer writers) and fill
missing optional ones, so an old watcher can read a newer agent's run. Timestamps are unix
seconds (`ts`, `created`, ...) with an ISO twin added for humans browsing with `aws s3 cp`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

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

METADATA = "metadata.json"
HEARTBEAT = "heartbeat.json"
PROGRESS = "progress.json"
HISTORY = "history.json"
LOGS = "logs/"
LOG_LATEST = "logs/training_log_latest.txt"
ARTIFACTS = "artifacts/"
ERROR = "_error"
COMPLETE = "_complete"
STOP = "control/stop"
ALERTS = "_alerts.json"
# The agent's OOM restarts: {"run_id", "attempts": [{attempt, micro_batch, grad_accum, step, next_micro_batch, ...}]}.
OOM_ATTEMPTS = "oom_attempts.json"
# The loss curve the agent draws at the end of a run (agent/daemon/curve.py; needs the plots extra).
LOSS_CURVE = "artifacts/loss_curve.png"
# The agent's host/GPU/disk samples: a bounded columnar time series (agent/daemon/sampling.py).
SAMPLES = "samples.json"
# The watcher's index: one empty-ish marker per run that is finished and fully alerted, so a
# sweep lists these once instead of reading every finished run (ops/index.py).
INDEX = "_index/"
INDEX_DONE = "_index/done/"
# The watcher's orphan ledger: `_orphans/<region>/<instance-id>.json` per tagged instance seen idle
# (ops/orphans.py), so an idle GPU box is reported once however many watchers sweep.
ORPHANS = "_orphans/"
# A resumed run's earlier attempts: `attempts/<n>/_error` (the claim) and `attempts/<n>/_alerts.json`.
ATTEMPTS = "attempts/"
# The file a trainer checkpoint folder gets last (train.sft.checkpoint): a stored
# `artifacts/checkpoint-<step>/` holding it is whole, so a resume may start from it.
CHECKPOINT_STATE = "trainer_state.pt"
CHUNK_DIGITS = 8
# S3 lifecycle expires old log chunks by this tag (infra/terraform/store.tf): a prefix filter
# cannot reach `<runs>/<run-id>/logs/` across run ids.
LOG_CHUNK_TAGS = {"trainctl-kind": "log-chunk"}


# The tag every trainctl resource carries (infra/terraform/versions.tf default_tags; `ctl launch`
# adds it to a box that lacks it): the watcher's orphan scan filters on it.
MANAGED_TAG_KEY, MANAGED_TAG_VALUE = "ManagedBy", "trainctl"

# The run's workdir on the box (agent.daemon.workdir): one folder per run, these names inside.
WD_AGENT_PID = "agent.pid"  # the agent's pid; a live one marks the box busy
WD_AGENT_LOCK = "agent.lock"  # the agent's flock: one agent per workdir
WD_TRAINER_PID = "trainer.pid"  # written by agent.daemon.wrap
WD_WRAPPER_PID = "wrapper.pid"  # agent.daemon.wrap's pid = the trainer's process group id
WD_LOG = "trainer.log"  # trainer stdout+stderr: the durable spool shipped to the store
WD_PROGRESS = "progress.jsonl"  # written by the trainer (env TRAINCTL_PROGRESS_FILE)
WD_OUTPUT = "output"  # the trainer's outputs (env TRAINCTL_OUTPUT_DIR)
WD_EXIT_STATUS = "exit_status"  # JSON {exit_code, signal, pid, ts} written when the trainer ends
WD_STATE = "agent_state.json"  # shipping cursor, chunk seq, heartbeat seq, S3 request counts
WD_ENV = "agent.env"  # the agent's environment (0600), written by `ctl launch`
# One attempt's agent files: a resume on the same box moves them aside before the next agent starts.
WD_ATTEMPT_FILES = (WD_STATE, WD_LOG, WD_PROGRESS, WD_EXIT_STATUS, WD_TRAINER_PID, WD_WRAPPER_PID, WD_AGENT_PID)


def key(run_id: str, name: str) -> str:
    """The store key of `name` inside run `run_id` (the run id must already be validated)."""
    return f"{run_id}/{name}"


def attempt_name(n: int, name: str = "") -> str:
    """`attempts/3/_error`: `name` of archived attempt `n` inside a run (the folder when `name` is empty)."""
    return f"{ATTEMPTS}{n}/{name}"


def attempt_of(key_or_name: str) -> int | None:
    """The attempt number of an archived `[<run-id>/]attempts/<n>/_error` key, None for any other key."""
    m = re.search(rf"(?:\A|/){ATTEMPTS}(\d+)/{ERROR}\Z", key_or_name)
    return int(m.group(1)) if m else None


def index_done_name(run_id: str) -> str:
    """`_index/done/<run-id>`: the watcher's marker for a finished, fully alerted run (store root)."""
    return f"{INDEX_DONE}{run_id}"


def orphan_name(region: str, instance_id: str) -> str:
    """`_orphans/<region>/<instance-id>.json`: the watcher's record of an idle tagged box (store root)."""
    return f"{ORPHANS}{region}/{instance_id}.json"


def orphan_of(key: str) -> tuple[str, str] | None:
    """(region, instance id) of an orphan record key, None for anything else."""
    rest = key[len(ORPHANS):] if key.startswith(ORPHANS) else ""
    region, _, name = rest.partition("/")
    return (region, name[:-5]) if region and name.startswith("i-") and name.endswith(".json") else None


def chunk_name(seq: int) -> str:
    """`logs/00000042.log`: zero-padded so names sort in upload order."""
    return f"{LOGS}{seq:0{CHUNK_DIGITS}d}.log"


def chunk_seq(key_or_name: str) -> int | None:
    """The sequence number of a log chunk key, or None for other keys under logs/."""
    base = key_or_name.rsplit("/", 1)[-1]
    stem, dot, ext = base.partition(".")
    if ext != "log" or len(stem) != CHUNK_DIGITS or not stem.isdigit():
        return None
    return int(stem)


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
