"""A run that goes on after an interruption: the store side of `ctl launch --resume`.

How the old `_error` stops blocking the run id: the resuming launch copies it to
`attempts/<n>/_error` with a create-only write (the claim), and only then deletes `_error`.
Two resumes racing for the same run compute the same `<n>`; exactly one create succeeds, the
other stops with a clear message and changes nothing. The history of every attempt stays in
the store, and the log goes on in the same `logs/` sequence (`next_log_seq`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from agent.protocol import records as p
from agent.protocol.errors import ConfigError, StoreError, TrainctlError
from agent.protocol.runstore import RunStore

log = logging.getLogger("trainctl.agent")
# A stored checkpoint is whole once its trainer state (written last) is in: train.sft's, or HF
# Trainer's trainer_state.json (the agent uploads an HF script's checkpoint-N folders as they complete).
HF_CHECKPOINT_STATE = "trainer_state.json"
_CKPT_STATE = re.compile(rf"/checkpoint-(\d+)/(?:{re.escape(p.CHECKPOINT_STATE)}|{re.escape(HF_CHECKPOINT_STATE)})\Z")


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    name: str  # checkpoint-<step>
    prefix: str  # store key of artifacts/checkpoint-<step>/
    keys: tuple[str, ...]


def next_log_seq(rs: RunStore, run_id: str) -> int:
    """The first log chunk number for a new attempt: 1 for a new run, after the last chunk otherwise."""
    try:
        last = 0
        for k in rs.list_log_chunks(run_id):
            last = max(last, p.chunk_seq(k) or 0)
        return last + 1
    except (StoreError, OSError) as exc:
        log.warning("could not list earlier log chunks (%s): numbering this attempt's log from 1", exc)
        return 1


def newest_stored_checkpoint(rs: RunStore, run_id: str, preferred: str | None = None) -> StoredCheckpoint | None:
    """The checkpoint to resume from: the one the `_error` marker names when it is whole, else the
    highest step whose trainer state (written last) is in the store."""
    keys = rs.list_artifacts(run_id)
    steps = sorted({int(m.group(1)) for k in keys if (m := _CKPT_STATE.search(k))}, reverse=True)
    if preferred:
        m = re.search(r"checkpoint-(\d+)/?\Z", preferred)
        if m and int(m.group(1)) in steps:
            steps.insert(0, int(m.group(1)))
    if not steps:
        return None
    step = steps[0]
    prefix = rs.artifact_key(run_id, f"checkpoint-{step}/")
    return StoredCheckpoint(step, f"checkpoint-{step}", prefix, tuple(k for k in keys if k.startswith(prefix)))


def download_checkpoint(rs: RunStore, ckpt: StoredCheckpoint, output_dir: Path) -> Path:
    """Copy a stored checkpoint into the trainer's output dir (atomically: a folder named
    checkpoint-N is whole, as the trainer's own are). Returns the folder."""
    final = Path(output_dir) / ckpt.name
    tmp = final.with_name(final.name + ".partial")
    for k in ckpt.keys:
        dest = tmp / k[len(ckpt.prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        rs.download_artifact(k, dest)
    if final.exists():
        import shutil

        shutil.rmtree(final)
    tmp.rename(final)
    return final


def check_resumable(rs: RunStore, run_id: str) -> p.ErrorMarker:
    """The `_error` of a run that may be resumed; a clear error for any other state."""
    rs.require_run(run_id)
    if p.COMPLETE in rs.markers(run_id):
        raise ConfigError(f"run {run_id} completed: there is nothing to resume")
    err = rs.read_error(run_id)
    if err is None:
        raise ConfigError(f"run {run_id} has no _error marker: it is still running (or being resumed); "
                          f"`ctl status {run_id}` shows which")
    return err


def archive_error(rs: RunStore, run_id: str) -> int:
    """Move `_error` to `attempts/<n>/_error` (create-only claim, then delete). Returns n."""
    old = rs.read_error_bytes(run_id)
    if old is None:
        raise TrainctlError(f"run {run_id}: its _error marker vanished; another `ctl launch --resume` got there "
                            "first")
    lost = TrainctlError(f"run {run_id}: another `ctl launch --resume` claimed it at the same time; only one "
                         f"box may continue a run (`ctl status {run_id}`)")
    done = rs.attempt_numbers(run_id)
    # A racer that lists after our claim must not take the next number for the same marker.
    if any(rs.read_attempt_error(run_id, i) == old for i in done[-1:]):
        raise lost
    n = (done or [0])[-1] + 1
    if not rs.claim_attempt(run_id, n, old):
        raise lost
    rs.delete_error(run_id)
    return n


def reset_watch_state(rs: RunStore, run_id: str, n: int) -> None:
    """After the claim: the watcher's ledger of attempt `n` moves to `attempts/<n>/`, and the run leaves
    the watcher's done index, so the resumed attempt is watched (and alerted on) afresh."""
    rs.archive_alerts(run_id, n)
    rs.unmark_done(run_id)


def restore_error(rs: RunStore, run_id: str, n: int) -> bool:
    """Undo a claim whose agent never started (the box turned out busy): `attempts/<n>/_error` and its
    ledger go back, so the run reads as it did and can be resumed again. False if a marker appeared."""
    old = rs.read_attempt_error(run_id, n)
    if old is None or not rs.restore_error_bytes(run_id, old):
        return False
    rs.unarchive_alerts(run_id, n)
    rs.drop_attempt(run_id, n)
    return True
