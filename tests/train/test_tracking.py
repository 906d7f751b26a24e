"""`[train] report_to = ["tensorboard"]`: the real tiny 4-bit QLoRA trainer under the real agent writes
TensorBoard event files that tensorboard's own reader reads back with the losses it reported, and
they land in the run's artifacts; without the package the run says so in one line and trains on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.fixtures.tiny_model import prepare_tiny_dataset
from tests.trainers.harness import Agents
from train.schema_walk import build

pytestmark = pytest.mark.slow
CTL = str(Path(sys.executable).parent / "ctl")
RUN = "track-20260101-120000"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def packed(tiny_model, tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("track-data"),
                                [f"alpha beta gamma delta {i} alpha beta gamma delta" for i in range(120)], tiny_model)


def train_toml(tmp_path: Path, tiny_model: Path, packed: Path) -> Path:
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{packed}"\n[lora]\nr = 8\nalpha = 16\n'
                   "[train]\nper_device_batch_size = 4\ngrad_accum = 1\nlearning_rate = 5e-3\nwarmup_ratio = 0.0\n"
                   'max_grad_norm = 1.0\nmax_steps = 6\nsave_steps = 0\nreport_to = ["tensorboard"]\n')
    return cfg


def test_tensorboard_events_hold_the_reported_losses_and_reach_the_artifacts(agents, tmp_path, tiny_model, packed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store, wd = tmp_path / "store", tmp_path / "wd"
    proc = agents.start(RUN, str(store), wd, [CTL, "train", "sft", "--config", str(train_toml(tmp_path, tiny_model,
                                                                                                packed))], env=ENV)
    assert agents.wait(proc, 400) == 0, Agents.output(proc)
    rs = RunStore(LocalStore(store))
    assert rs.read_complete(RUN) is not None, Agents.output(proc)
    reported = [json.loads(x) for x in (wd / "progress.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in reported if "step" in r and "loss" in r}
    evals = [r["eval_loss"] for r in reported if "eval_loss" in r]
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and evals

    events = EventAccumulator(str(wd / "output" / "tensorboard" / RUN))
    events.Reload()
    assert {"train/loss", "train/learning_rate", "train/tokens_per_s", "eval/loss"} <= set(events.Tags()["scalars"])
    got = {e.step: e.value for e in events.Scalars("train/loss")}
    assert got == pytest.approx(losses, rel=1e-6)
    assert [e.value for e in events.Scalars("eval/loss")] == pytest.approx(evals, rel=1e-6)

    stored = [k for k in rs.store.list(f"{RUN}/artifacts/tensorboard/") if "tfevents" in k]
    assert len(stored) == 1 and stored[0].startswith(f"{RUN}/artifacts/tensorboard/{RUN}/events.out.tfevents.")
    assert "tensorboard" in {a["name"] for a in rs.read_complete(RUN).artifacts}
    assert "report_to: writing tensorboard to" in rs.read_logs(RUN).data.decode()


def test_without_the_package_one_line_at_start_and_the_run_trains_on(tmp_path, tiny_model, packed):
    # A tensorboard that cannot be imported, first on the path: what a box without the extra sees.
    shadow = tmp_path / "shadow" / "tensorboard"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named tensorboard')\n")
    out = tmp_path / "out"
    env = {**os.environ, **ENV, "PYTHONPATH": str(shadow.parent), "TRAINCTL_OUTPUT_DIR": str(out)}
    res = subprocess.run([CTL, "train", "sft", "--config", str(train_toml(tmp_path, tiny_model, packed)),
                          "--set", "train.max_steps=2"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    said = [ln for ln in res.stderr.splitlines() if "report_to" in ln]
    assert said == ["report_to: tensorboard skipped, the tensorboard package is not installed "
                    "(pip install 'trainctl[tracking]')"]
    assert "Traceback" not in res.stderr and (out / "adapter").is_dir() and not (out / "tensorboard").exists()


def test_an_unknown_tracker_is_refused_at_load():
    from agent.protocol.errors import ConfigError
    from train.schemas import TrainConfig

    with pytest.raises(ConfigError, match=r"train.report_to: 'wandb' is not one of tensorboard \(W&B is not offered"):
        build(TrainConfig, [("t.toml", {"train": {"report_to": ["wandb"]}})], source="t.toml")
