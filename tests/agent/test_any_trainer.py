"""The agent's parts for any trainer, on real files: progress from a trainer's output (and the progress
file's precedence), the cadence fed and published, checkpoint folders watched, artifacts by absolute
path with stored-apart folders left out, the `_complete` reason, and the latest log's folded frames."""

from __future__ import annotations

import json

import pytest

from agent.daemon.artifacts import ArtifactError, sync_artifact
from agent.daemon.cadence import Cadence, CadenceSettings
from agent.daemon.checkpoints import CheckpointWatch
from agent.daemon.finalize import artifact_name, complete_marker
from agent.daemon.logship import LogShipper
from agent.daemon.outputparse import compile_progress_regex
from agent.daemon.outputprogress import OutputProgress
from agent.daemon.progress import ProgressTracker
from agent.daemon.workdir import AgentState, Workdir
from agent.protocol.runstore import RunStore

RUN = "any-20260101-000000"


def _bar(n: int, total: int, secs: int) -> str:
    return f"\r {100 * n // total:3d}%|###       | {n}/{total} [00:{secs:02d}<00:10, 1.00it/s]"


def _log(loss: float, epoch: float) -> str:
    """An HF log dict as tqdm.write prints it under a live bar: the bar wiped, the dict, a newline."""
    return "\r" + " " * 40 + "\r" + _dict(loss, epoch) + "\n"


def _dict(loss: float, epoch: float) -> str:
    return f"{{'loss': '{loss}', 'grad_norm': '1.5', 'learning_rate': '0.0003', 'epoch': '{epoch}'}}"


def _reader(tmp_path, rx=None, settings=None):
    log = tmp_path / "trainer.log"
    log.write_bytes(b"")
    tracker = ProgressTracker(tmp_path / "progress.jsonl", Cadence(settings))
    return log, tracker, OutputProgress(log, tracker, rx)


def _write(log, text: str) -> None:
    with open(log, "a") as fh:
        fh.write(text)


def test_output_gives_steps_losses_eval_and_phases(tmp_path):
    log, tracker, out = _reader(tmp_path)
    _write(log, "Map: 100%|##########| 24/24 [00:00<00:00, 900.00 examples/s]\n")
    out.read_new(now=100.0)
    assert tracker.source is None and tracker.last_step is None  # a data bar is not training
    _write(log, _bar(0, 4, 0))
    out.read_new(now=100.0)
    for step in (1, 2):  # logging every 2nd step: step 1 is progress, step 2 a point
        _write(log, _bar(step, 4, step) + (_log(2.0, 0.5) + _bar(step, 4, step) if step == 2 else ""))
        out.read_new(now=100.0 + step)
    _write(log, _bar(2, 4, 2) + "\n\r  0%|          | 0/2 [00:00<?, ?it/s]")  # HF's evaluation bar
    out.read_new(now=103.0)
    assert tracker.phase == "evaluating"
    _write(log, "\r100%|##########| 2/2 [00:00<00:00, 9.00it/s]\n{'eval_loss': '1.75', 'eval_runtime': '0.5'}\n"
           + _bar(2, 4, 2))  # the training bar redraws under the printed dict
    out.read_new(now=104.0)
    assert tracker.phase == "training" and tracker.metrics["eval_loss"] == 1.75
    _write(log, _bar(3, 4, 3) + _bar(4, 4, 4) + _log(1.5, 1.0) + _bar(4, 4, 4) + "\n"
           "{'train_runtime': '4.2', 'train_samples_per_second': '2', 'train_loss': '1.8', 'epoch': '1.0'}\n")
    out.read_new(now=106.0)
    out.finish()
    rec = tracker.record(107.0)
    assert (rec.step, rec.total_steps, rec.loss, rec.lr, rec.epoch, rec.eval_loss) == (4, 4, 1.5, 0.0003, 1.0, 1.75)
    assert [(h["step"], h["loss"]) for h in tracker.history_points()] == [(2, 2.0), (4, 1.5)]  # no loss-less points
    assert tracker.final_metrics()["train_runtime_s"] == 4.2 and tracker.source == "output"
    assert out.last_log_ts == 106.0  # finish() read no new byte: the last one came at 106


def test_the_progress_file_takes_over_from_the_output(tmp_path):
    log, tracker, out = _reader(tmp_path)
    _write(log, _bar(1, 10, 1) + _log(3.0, 0.1) + _bar(1, 10, 1))
    out.read_new(now=10.0)
    assert tracker.source == "output" and tracker.last_step == 1
    (tmp_path / "progress.jsonl").write_text(json.dumps({"step": 2, "total_steps": 10, "loss": 2.5, "ts": 11.0}) + "\n")
    tracker.read_new()
    _write(log, _bar(3, 10, 3) + _log(9.9, 0.3) + _bar(3, 10, 3))
    assert out.read_new(now=12.0) > 0
    assert tracker.source == "trainer" and tracker.last_step == 2 and tracker.last_loss == 2.5
    assert [h["step"] for h in tracker.history_points()] == [2]  # the output's guesses went
    assert out.last_log_ts == 12.0  # still watched for log silence


def test_a_runs_regex_and_the_published_cadence(tmp_path):
    rx = compile_progress_regex(r"it (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>[\d.]+)")
    log, tracker, out = _reader(tmp_path, rx, CadenceSettings(min_steps=3, warmup_steps=1, floor_s=1.0))
    for step in range(1, 4):
        _write(log, f"it {step}/50 loss 1.{step}\n")
        out.read_new(now=1000.0 + 2 * step)
    assert tracker.cadence_record() is None  # not learned yet: the heartbeat carries null
    for step in range(4, 7):
        _write(log, f"it {step}/50 loss 1.{step}\n")
        out.read_new(now=1000.0 + 2 * step)
    cad = tracker.cadence_record()
    assert cad["learned"] and cad["step_p50_s"] == 2.0 and cad["last_step_ts"] == 1012.0
    assert cad["hung_after_s"] == 10.0  # 5 x the p95 gap of 2 s
    assert tracker.record(0).total_steps == 50 and tracker.last_loss == 1.6


def test_a_restart_replays_the_output_without_pacing_it(tmp_path):
    log = tmp_path / "trainer.log"
    log.write_text("".join(_bar(i, 100, i % 60) + _log(1.0 / i, i / 100) + _bar(i, 100, i % 60) for i in range(1, 40)))
    tracker = ProgressTracker(tmp_path / "progress.jsonl")
    out = OutputProgress(log, tracker)
    out.catch_up()
    assert tracker.last_step == 39 and len(tracker.history) == 39
    assert tracker.cadence.steps_seen == 0 and tracker.cadence_record() is None  # no burst of 0 s steps
    assert out.last_log_ts == pytest.approx(log.stat().st_mtime)


def test_checkpoint_folders_saving_phase_and_declarations(tmp_path):
    ck = tmp_path / "hf"
    tracker = ProgressTracker(tmp_path / "progress.jsonl")
    tracker.source = "output"
    watch = CheckpointWatch(ck, tracker, settle_s=5.0)
    assert watch.scan(0.0) == []  # the folder does not exist yet
    (ck / "checkpoint-2").mkdir(parents=True)
    (ck / "checkpoint-2" / "model.safetensors").write_bytes(b"x" * 10)
    (ck / "tmp-checkpoint-4").mkdir()
    assert watch.scan(1.0) == [] and tracker.phase == "saving"
    (ck / "checkpoint-2" / "trainer_state.json").write_text("{}")  # HF writes it last
    assert watch.scan(2.0) == ["checkpoint-2"] and tracker.phase == "training"
    assert [(d.name, d.path, d.final) for d in tracker.declared] == [("checkpoint-2", f"{ck}/checkpoint-2/", False)]
    assert not tracker.declare("checkpoint-2", "hf/checkpoint-2/", False)  # the callback's own: not twice
    (ck / "checkpoint-3").mkdir()  # no state file (another trainer): complete once it stops changing
    (ck / "checkpoint-3" / "w.bin").write_bytes(b"y")
    assert watch.scan(10.0) == [] and watch.scan(14.0) == [] and watch.scan(15.0) == ["checkpoint-3"]
    (ck / "checkpoint-9").mkdir()
    assert watch.scan(16.0) == []
    (ck / "checkpoint-9").rmdir()  # rotated away before it settled
    assert watch.scan(17.0) == [] and watch.done.pending == {}
    (ck / "checkpoint-11").mkdir()
    (ck / "checkpoint-11" / "a").write_text("1")
    assert watch.scan(18.0, final=True) == ["checkpoint-11"]  # the trainer ended: what is there counts
    assert [p.name for p in watch.folders()] == ["checkpoint-2", "checkpoint-3", "checkpoint-11"]


def test_artifacts_by_absolute_path_leave_stored_apart_folders_out(tmp_path, local_store):
    out, elsewhere = tmp_path / "wd" / "output", tmp_path / "data" / "hf"
    out.mkdir(parents=True)
    (elsewhere / "checkpoint-2").mkdir(parents=True)
    (elsewhere / "model.safetensors").write_bytes(b"m" * 100)
    (elsewhere / "checkpoint-2" / "model.safetensors").write_bytes(b"c" * 100)
    rs = RunStore(local_store)
    up = sync_artifact(rs, RUN, out, "hf", str(elsewhere), True, (elsewhere / "checkpoint-2",))
    assert (up.files, up.size) == (1, 100)
    keys = sorted(k.rsplit("artifacts/", 1)[1] for k in rs.list_artifacts(RUN))
    assert keys == ["hf/model.safetensors"]
    whole = sync_artifact(rs, RUN, out, "checkpoint-2", str(elsewhere / "checkpoint-2"), False,
                          (elsewhere / "checkpoint-2",))  # a folder is never excluded from itself
    assert whole.files == 1
    with pytest.raises(ArtifactError) as exc:
        sync_artifact(rs, RUN, out, "merged", str(tmp_path / "nowhere"), True)
    assert exc.value.absent
    with pytest.raises(ArtifactError) as exc:
        sync_artifact(rs, RUN, out, "up", "../data/hf", True)  # relative paths stay inside the output dir
    assert "outside the output dir" in str(exc.value) and not exc.value.absent


def test_complete_reason_and_artifact_names():
    assert complete_marker(1.0, {}, [{"name": "a"}, {"name": "b"}]).reason == "training finished; 2 artifacts verified"
    none = complete_marker(1.0, {}, [])
    assert none.artifacts_verified == 0 and none.reason == "training finished; no artifacts declared, none verified"
    assert [artifact_name(p) for p in ("out/adapter/", "/abs/merged model", ".", "")] == \
        ["adapter", "merged_model", "output", "output"]


def test_latest_log_shows_each_carriage_return_line_by_its_last_frame(tmp_path, local_store):
    wd = Workdir(tmp_path / "wd")
    wd.create()
    state = AgentState(run_id=RUN)
    rs = RunStore(local_store)
    sh = LogShipper(rs, RUN, wd, state.log, lambda: state.save(wd.state), flush_s=0.0)
    raw = ("loading\n" + "".join(_bar(i, 5, i) for i in range(6)) + _log(1.0, 0.2) + _bar(1, 3, 0)).encode()
    wd.log.write_bytes(raw)
    sh.ship(0.0, final=True)
    sh.refresh_latest(0.0, force=True)
    assert rs.read_logs(RUN).data == raw  # the chunks stay byte-exact
    latest = rs.read_latest_log(RUN).splitlines()
    assert latest == ["loading", _dict(1.0, 0.2), _bar(1, 3, 0)[1:]]
    assert sh.tail(2) == [_dict(1.0, 0.2), _bar(1, 3, 0)[1:]]
