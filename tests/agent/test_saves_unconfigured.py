"""Saves of an unmodified HF script seen with no `[trainer] checkpoints` (agent.daemon.saves).

The real agent, run without --checkpoints, around tests/trainers/save_trainer.py: while its
`checkpoint-N` folder is incomplete a heartbeat says `saving`, once `trainer_state.json` is there
one says `training` (the trainer prints nothing until then, so only the folder can say so), and
nothing lands under artifacts/. Every wait is on an event: the trainer's ack, a heartbeat's phase.
The scan's bounds (depth, symlinks, hidden folders) and the phase rules are checked on real folders.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import pytest

from agent.daemon.cadence import SAVE
from agent.daemon.progress import ProgressTracker
from agent.daemon.saves import SaveWatch, find_checkpoints
from agent.protocol import records as p
from agent.protocol.atomic import write_atomic
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.trainers.harness import REPO, wait_for

RUN = "saves-20260101-120000"
TRAINER = str(REPO / "tests" / "trainers" / "save_trainer.py")


def _control(path, **c) -> None:
    write_atomic(path, json.dumps(c).encode())
    wait_for(lambda: _acked(path) == c["gen"], timeout=60, what=f"the trainer's ack of {c}")


def _acked(path):
    try:
        return json.loads(path.with_name(path.name + ".ack").read_text())
    except (OSError, ValueError):
        return None


def _last_printed_step(wd) -> int:
    return int(re.findall(r"'step': (\d+)", (wd / p.WD_LOG).read_text())[-1])


def _beat(rs: RunStore, phase: str, after: int = -1) -> p.Heartbeat:
    def got():
        try:
            hb = rs.read_heartbeat(RUN)
        except p.RecordError:
            return None
        # None until the agent's first heartbeat is stored (a loaded machine starts it late)
        return hb if hb is not None and hb.seq > after and hb.phase == phase else None
    return wait_for(got, timeout=90, what=f"a heartbeat with phase {phase}")


@pytest.mark.parametrize("where", ["output", "cwd"])
def test_a_slow_save_reads_saving_then_training_and_uploads_nothing(agents, tmp_path, where):
    root, wd, control = tmp_path / "store", tmp_path / "wd", tmp_path / "control.json"
    job = tmp_path / "job"
    job.mkdir()
    # "output": TRAINCTL_OUTPUT_DIR/checkpoint-5; "cwd": the trainer chdirs, saves to ./out/checkpoint-5.
    args = ["output"] if where == "output" else ["out", "--chdir", str(job)]
    folder = (wd / "output" if where == "output" else job / "out") / "checkpoint-5"
    rs = RunStore(LocalStore(root))
    proc = agents.start(RUN, str(root), wd, [sys.executable, TRAINER, str(control), *args],
                        extra=["--checkpoint-settle-s", "3600"])  # no state file: saving however long it takes
    _control(control, gen=0)
    first = _beat(rs, "training")
    _control(control, gen=1, save=5)  # the folder is there and growing; the trainer prints nothing
    saving = _beat(rs, "saving", after=first.seq)
    assert folder.is_dir() and not (folder / "trainer_state.json").exists()
    _control(control, gen=2, save=5, finish=True)  # trainer_state.json written; still silent
    after = _beat(rs, "training", after=saving.seq)
    assert (folder / "trainer_state.json").is_file()
    assert after.last_step == _last_printed_step(wd)  # the trainer printed nothing since: the folder said so
    _control(control, gen=3, save=5, finish=True, resume=True)
    write_atomic(control, json.dumps({"gen": 4, "end": True}).encode())  # it exits: its exit is the ack
    assert agents.wait(proc, timeout=120) == 0, agents.output(proc)
    assert not [k for k in LocalStore(root).list(f"{RUN}/") if "checkpoint-" in k]  # uploading stays opt-in


def _tracker(tmp_path) -> ProgressTracker:
    t = ProgressTracker(tmp_path / "progress.jsonl")
    t.set_phase("training", 1.0)
    return t


def test_the_scan_looks_two_deep_never_through_symlinks_or_hidden_folders(tmp_path):
    out, cwd, far = tmp_path / "out", tmp_path / "cwd", tmp_path / "far"
    (out / "checkpoint-1").mkdir(parents=True)
    (cwd / "hf" / "checkpoint-2").mkdir(parents=True)
    (cwd / "a" / "b" / "checkpoint-3").mkdir(parents=True)  # depth 3: not looked at
    (cwd / ".git" / "checkpoint-4").mkdir(parents=True)  # hidden: skipped
    (far / "checkpoint-5").mkdir(parents=True)
    os.symlink(far, cwd / "linked")  # a symlinked folder is not entered
    os.symlink(far / "checkpoint-5", cwd / "checkpoint-6")  # nor counted
    (cwd / "checkpoint-7").write_text("a file")  # not a folder
    (cwd / "tmp-checkpoint-8").mkdir()
    found = find_checkpoints([out, cwd, out])
    assert sorted(os.path.relpath(k, tmp_path) for k in found) == ["cwd/hf/checkpoint-2", "out/checkpoint-1"]


def test_phase_rules_old_folders_progress_file_and_no_fight(tmp_path):
    out = tmp_path / "out"
    old = out / "checkpoint-1"
    old.mkdir(parents=True)
    (old / "model.bin").write_bytes(b"x")  # an earlier run's save, no state file: still for an hour
    os.utime(old / "model.bin", (time.time() - 3600, time.time() - 3600))
    tracker = _tracker(tmp_path)
    watch = SaveWatch(lambda: [out], tracker, settle_s=30.0)
    now = time.time()
    watch.scan(now)
    assert tracker.phase == "training" and watch.complete == {str(old)}
    new = out / "checkpoint-2"
    new.mkdir()
    (new / "model.bin").write_bytes(b"y")
    watch.scan(now + 1)
    assert tracker.phase == "saving"
    tracker.set_phase("training", now + 2)  # the output says training (a log line)
    watch.scan(now + 3)  # unchanged, not settled: the watch does not take it back
    assert tracker.phase == "training"
    (new / "model.bin").write_bytes(b"yy")  # growing again: saving again
    watch.scan(now + 4)
    assert tracker.phase == "saving"
    (new / "trainer_state.json").write_text("{}")
    watch.scan(now + 5)
    assert tracker.phase == "training" and tracker.cadence._durations[SAVE]  # the save's length was learned
    (out / "checkpoint-3").mkdir()
    filed = _tracker(tmp_path)
    filed.source = p.Heartbeat.SOURCE_TRAINER  # the progress file reports its phases: the watch stays out
    SaveWatch(lambda: [out], filed).scan(now + 6)
    assert filed.phase == "training"
