"""TrainctlCallback in a real HF Trainer run on the tiny model: the progress records it writes
match the Trainer's own log history, checkpoints and the final model are declared, the agent's
progress reader takes the file as it takes our trainer's, and outside the agent nothing is written."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.progress import ProgressTracker

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "trainers" / "hf_trainer_script.py"
CALLBACK = REPO / "train" / "hf_callback.py"

pytestmark = pytest.mark.slow


def _train(tmp: Path, model: Path, env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINCTL_")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env_extra})
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(model), *args], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_records_from_a_real_hf_trainer_run(tiny_model, tmp_path):
    out_dir, prog, hist = tmp_path / "output", tmp_path / "progress.jsonl", tmp_path / "history.json"
    out_dir.mkdir()
    _train(tmp_path, tiny_model, {"TRAINCTL_PROGRESS_FILE": str(prog), "TRAINCTL_OUTPUT_DIR": str(out_dir)},
           "--out", str(out_dir / "hf"), "--steps", "6", "--save-steps", "2", "--eval-steps", "3",
           "--history", str(hist), "--callback")
    recs = [json.loads(line) for line in prog.read_text().splitlines()]
    history = json.loads(hist.read_text())

    steps = [r for r in recs if "step" in r]
    logged = {h["step"]: h for h in history if "loss" in h}
    assert [r["step"] for r in steps] == sorted(logged) == [1, 2, 3, 4, 5, 6]  # one record per step, no repeats
    for r in steps:
        h = logged[r["step"]]
        assert (r["loss"], r["lr"], r["epoch"], r["total_steps"]) == (h["loss"], h["learning_rate"], h["epoch"], 6)
    evals = [(r["eval_at_step"], r["eval_loss"]) for r in recs if "eval_loss" in r]
    want = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    assert evals == want and [s for s, _ in want] == [3, 6]
    arts = [(r["artifact"], r["path"], r["final"]) for r in recs if "artifact" in r]
    assert arts == [("checkpoint-2", "hf/checkpoint-2/", False), ("checkpoint-4", "hf/checkpoint-4/", False),
                    ("checkpoint-6", "hf/checkpoint-6/", False), ("model", "hf/", True)]
    for _, path, _ in arts:
        assert (out_dir / path / "config.json").is_file()  # every declared folder holds a saved model
    assert all(isinstance(r["ts"], float) for r in recs)

    # the phases bracket evaluation and saving, and each step's record comes before the phase that follows it
    seq = [r.get("phase") or ("step" if "step" in r else "eval" if "eval_loss" in r else "artifact") for r in recs]
    assert seq[:8] == ["training", "step", "step", "saving", "artifact", "training", "step", "evaluating"]
    assert seq[8:10] == ["eval", "training"]
    assert seq[-6:] == ["evaluating", "eval", "saving", "artifact", "training", "artifact"]

    tracker = ProgressTracker(prog)  # the agent's own reader: same contract as `ctl train sft`
    assert tracker.read_new() == len(recs) and tracker.bad_lines == 0
    assert tracker.last_step == 6 and tracker.metrics["total_steps"] == 6
    assert tracker.last_loss == logged[6]["loss"]
    assert [h["step"] for h in tracker.history_points()] == [1, 2, 3, 4, 5, 6]
    assert [(d.name, d.final) for d in tracker.declared][-1] == ("model", True)


def test_steps_between_logs_and_an_unwritable_progress_file(tiny_model, tmp_path):
    """Logging every 3rd step: the other steps are still reported (without a loss), once each."""
    out_dir, prog, hist = tmp_path / "output", tmp_path / "progress.jsonl", tmp_path / "history.json"
    out_dir.mkdir()
    _train(tmp_path, tiny_model, {"TRAINCTL_PROGRESS_FILE": str(prog), "TRAINCTL_OUTPUT_DIR": str(out_dir)},
           "--out", str(out_dir / "hf"), "--steps", "4", "--logging-steps", "3", "--save-steps", "2",
           "--eval-steps", "4", "--history", str(hist), "--callback")
    recs = [json.loads(line) for line in prog.read_text().splitlines()]
    logged = {h["step"]: h["loss"] for h in json.loads(hist.read_text()) if "loss" in h}
    assert [(r["step"], r.get("loss")) for r in recs if "step" in r] == [(1, None), (2, None), (3, logged[3]), (4, None)]
    seq = [r.get("phase") or r.get("artifact") or ("step" if "step" in r else "eval") for r in recs]
    assert seq == ["training", "step", "step", "saving", "checkpoint-2", "training", "step", "step", "evaluating",
                   "eval", "saving", "checkpoint-4", "training", "model"]

    blocked = tmp_path / "no-such-dir" / "progress.jsonl"
    proc = _train(tmp_path, tiny_model, {"TRAINCTL_PROGRESS_FILE": str(blocked)}, "--out", str(tmp_path / "hf2"),
                  "--steps", "2", "--save-steps", "2", "--eval-steps", "2", "--callback")
    assert "TrainctlCallback: cannot write" in proc.stderr and (tmp_path / "hf2" / "model.safetensors").is_file()


def test_outside_the_agent_it_writes_nothing(tiny_model, tmp_path):
    before = set(os.listdir(tmp_path))
    _train(tmp_path, tiny_model, {}, "--out", str(tmp_path / "hf"), "--steps", "2", "--save-steps", "2",
           "--eval-steps", "2", "--callback")
    assert set(os.listdir(tmp_path)) - before == {"hf"}
    assert sorted(p.name for p in (tmp_path / "hf").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not [p for p in tmp_path.rglob("*") if "progress" in p.name or p.suffix == ".jsonl"]


def test_the_callback_is_one_file_that_needs_only_transformers(tmp_path):
    """A user can copy it next to a script: it imports the standard library and transformers only."""
    tree = ast.parse(CALLBACK.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported - {"__future__", "transformers"} <= set(sys.stdlib_module_names)
    shutil.copy(CALLBACK, tmp_path / "trainctl_callback.py")
    code = ("import sys, trainctl_callback as m, transformers; "
            "assert issubclass(m.TrainctlCallback, transformers.TrainerCallback); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('agent', 'train', 'trainctl', 'ops')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
