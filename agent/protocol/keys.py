"""The run store's names, declared once: every store key, workdir file name and tag, and the
functions that build and read the keys with numbers in them (log chunks, attempts, the watcher's
index and orphan records).

agent.protocol.records re-exports every name here (`p.HEARTBEAT`, `p.chunk_name`), so code that
reads and writes records needs one import; docs/design.md must name each key (tests/test_design_doc.py
walks this module).
"""

from __future__ import annotations

import re

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
