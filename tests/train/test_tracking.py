"""`[train] report_to = ["tensorboard", "wandb"]`: the real tiny 4-bit QLoRA trainer under the real agent
writes TensorBoard event files that tensorboard's own reader reads back with the losses it reported,
and an offline W&B run whose .wandb file W&B's own reader (`wandb leet inspect`) reads back with the
same losses, the run id and the resolved config; both land in the run's artifacts, and the W&B API
key is nowhere in what the run left. Without a package, or without a key for an online W&B, the run
says so in one line and trains on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.fixtures.tiny_train import write_train_toml
from tests.trainers.harness import Agents
from train.schema_walk import build

pytestmark = pytest.mark.slow
CTL = str(Path(sys.executable).parent / "ctl")
RUN = "track-20260101-120000"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def train_toml(tmp_path: Path, tiny_model: Path, packed: Path, report_to: str = '["tensorboard"]') -> Path:
    """Six steps of the tiny trainer reporting to `report_to` (a TOML list)."""
    return write_train_toml(tmp_path, tiny_model, packed, max_steps=6, report_to=report_to)


def run_to_completion(agents, tmp_path, cfg, env):
    """Our trainer under the real agent on a folder store, to `_complete`: (store dir, workdir, run
    store, process, losses by step, eval losses) as the trainer reported them in progress.jsonl."""
    store, wd = tmp_path / "store", tmp_path / "wd"
    proc = agents.start(RUN, str(store), wd, [CTL, "train", "sft", "--config", str(cfg)], env=env)
    assert agents.wait(proc, 400) == 0, Agents.output(proc)
    rs = RunStore(LocalStore(store))
    assert rs.read_complete(RUN) is not None, Agents.output(proc)
    reported = [json.loads(x) for x in (wd / "progress.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in reported if "step" in r and "loss" in r}
    evals = [r["eval_loss"] for r in reported if "eval_loss" in r]
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and evals
    return store, wd, rs, proc, losses, evals


def test_tensorboard_events_hold_the_reported_losses_and_reach_the_artifacts(agents, tmp_path, tiny_model, packed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store, wd, rs, proc, losses, evals = run_to_completion(agents, tmp_path, train_toml(tmp_path, tiny_model, packed),
                                                           ENV)

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

    with pytest.raises(ConfigError, match=r"train.report_to: 'mlflow' is not one of tensorboard, wandb"):
        build(TrainConfig, [("t.toml", {"train": {"report_to": ["wandb", "mlflow"]}})], source="t.toml")


# A key of W&B's classic shape (40 hex digits): one that agent.protocol.redact cannot tell from a
# digest when it stands bare, so the run must never print it at all.
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
WANDB = str(Path(sys.executable).parent / "wandb")


def wandb_env(tmp_path: Path, **more: str) -> dict:
    """Offline W&B with every folder of its own inside tmp (nothing in ~, nothing on the network), and
    generous waits for its service process on a loaded machine (WANDB__SERVICE_WAIT: x_service_wait)."""
    base = {f"WANDB_{k}_DIR": str(tmp_path / f"wandb-{k.lower()}") for k in ("CONFIG", "CACHE", "DATA")}
    return {**ENV, **base, "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_MODE": "offline",
            "WANDB_API_KEY": FAKE_KEY, "WANDB__SERVICE_WAIT": "300", "WANDB_INIT_TIMEOUT": "300", **more}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of a run's .wandb file, as W&B's own reader prints them."""
    res = subprocess.run([WANDB, "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "WANDB_MODE": "offline"})
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def test_wandb_offline_run_holds_the_reported_losses_and_config_and_reaches_the_artifacts(agents, tmp_path,
                                                                                           tiny_model, packed):
    cfg = train_toml(tmp_path, tiny_model, packed, '["tensorboard", "wandb"]')
    store, wd, rs, proc, losses, evals = run_to_completion(agents, tmp_path, cfg, wandb_env(tmp_path))

    runs = list((wd / "output" / "wandb").glob(f"offline-run-*-{RUN}"))
    assert len(runs) == 1 and (runs[0] / f"run-{RUN}.wandb").is_file()
    assert not (tmp_path / "wandb-dir" / "wandb").exists()  # the output folder wins over WANDB_DIR
    records = wandb_records(runs[0])
    rows = [r["history"] for r in records if r["type"] == "history"]
    assert {row["step"]["num"]: row["item"]["train/loss"] for row in rows} == pytest.approx(losses, rel=1e-6)
    assert [row["item"]["eval/loss"] for row in rows if "eval/loss" in row["item"]] == pytest.approx(evals, rel=1e-6)
    assert all({"train/learning_rate", "train/tokens_per_s"} <= set(row["item"]) for row in rows)
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["run_id"] == RUN and header["display_name"] == RUN and header["project"] == "trainctl"
    config = header["config"]["update"]
    assert config["train"]["max_steps"] == 6 and config["lora"]["r"] == 8 and config["model"]["path"] == str(tiny_model)
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]  # finish() ran

    stored = rs.store.list(f"{RUN}/artifacts/wandb/")
    assert f"{RUN}/artifacts/wandb/{runs[0].name}/run-{RUN}.wandb" in stored
    assert {"tensorboard", "wandb"} <= {a["name"] for a in rs.read_complete(RUN).artifacts}
    log = rs.read_logs(RUN).data.decode()
    assert f"report_to: writing tensorboard to {wd / 'output' / 'tensorboard'}, wandb to " \
           f"{wd / 'output' / 'wandb'} (offline)" in log

    left = [p for root in (wd, store, tmp_path / "wandb-dir", tmp_path / "wandb-data") if root.exists()
            for p in root.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert left == [] and FAKE_KEY not in Agents.output(proc)


def test_wandb_without_the_package_one_line_at_start_and_the_run_trains_on(tmp_path, tiny_model, packed):
    shadow = tmp_path / "shadow" / "wandb"  # a wandb that cannot be imported, first on the path
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named wandb')\n")
    out = tmp_path / "out"
    env = {**os.environ, **wandb_env(tmp_path), "PYTHONPATH": str(shadow.parent), "TRAINCTL_OUTPUT_DIR": str(out)}
    res = subprocess.run([CTL, "train", "sft", "--config", str(train_toml(tmp_path, tiny_model, packed, '["wandb"]')),
                          "--set", "train.max_steps=2"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if "report_to:" in ln]
    assert said == ["report_to: wandb skipped, the wandb package is not installed (pip install 'trainctl[wandb]')"]
    assert "Traceback" not in res.stderr and (out / "adapter").is_dir() and not (out / "wandb").exists()


def test_wandb_online_without_a_key_one_line_at_start_and_the_other_tracker_writes(tmp_path, tiny_model, packed):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_env(tmp_path), TRAINCTL_OUTPUT_DIR=str(out), NETRC=str(tmp_path / "no-netrc"))
    del env["WANDB_API_KEY"], env["WANDB_MODE"]  # online (W&B's default), and no key anywhere
    cfg = train_toml(tmp_path, tiny_model, packed, '["tensorboard", "wandb"]')
    res = subprocess.run([CTL, "train", "sft", "--config", str(cfg), "--set", "train.max_steps=2"], env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [ln for ln in res.stderr.splitlines() if "report_to:" in ln] == [
        "report_to: wandb skipped, no API key for api.wandb.ai (set WANDB_API_KEY, or WANDB_MODE=offline to keep "
        "the run files only)"]
    assert [ln for ln in res.stdout.splitlines() if "report_to:" in ln] == [
        f"report_to: writing tensorboard to {out / 'tensorboard'}"]
    assert "Traceback" not in res.stderr and (out / "adapter").is_dir() and not (out / "wandb").exists()
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_wandb_key_the_trainer_printed_as_a_setting_is_redacted_from_the_log():
    from agent.protocol.redact import MASK, redact

    for line in (f"WANDB_API_KEY={FAKE_KEY}", f"export WANDB_API_KEY='{FAKE_KEY}'", f"wandb api_key: {FAKE_KEY}",
                 f"env: WANDB_API_KEY = {FAKE_KEY} WANDB_MODE=online"):
        assert FAKE_KEY not in redact(line) and MASK in redact(line), line


def test_a_run_that_fails_leaves_a_wandb_run_marked_failed_with_what_it_logged(tmp_path, tiny_model, packed):
    out = tmp_path / "out"
    env = {**os.environ, **wandb_env(tmp_path), "TRAINCTL_OUTPUT_DIR": str(out), "TRAINCTL_RUN_ID": RUN}
    res = subprocess.run([CTL, "train", "sft", "--config", str(train_toml(tmp_path, tiny_model, packed, '["wandb"]')),
                          "--set", "train.max_steps=4", "--set", "debug.inject_nan_at_step=3"], env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode != 0 and "training diverged" in res.stderr, res.stdout + res.stderr
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{RUN}")
    records = wandb_records(run_dir)
    assert sorted(r["history"]["step"]["num"] for r in records if r["type"] == "history") == [1, 2]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [1]


def test_wandb_online_with_its_server_unreachable_one_line_at_start_and_the_run_trains_on(tmp_path, tiny_model,
                                                                                          packed):
    import socket

    out = tmp_path / "out"
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(wandb_env(tmp_path), TRAINCTL_OUTPUT_DIR=str(out), TRAINCTL_RUN_ID=RUN, WANDB_MODE="online",
                   WANDB_BASE_URL=f"http://127.0.0.1:{closed.getsockname()[1]}", WANDB_INIT_TIMEOUT="5")
        res = subprocess.run([CTL, "train", "sft", "--config", str(train_toml(tmp_path, tiny_model, packed,
                                                                                '["wandb"]')),
                              "--set", "train.max_steps=2"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    said = [ln for ln in (res.stdout + res.stderr).splitlines() if "report_to:" in ln]
    assert len(said) == 1 and said[0].startswith("report_to: wandb skipped, wandb.init failed: "), said
    assert "Traceback" not in res.stderr and (out / "adapter").is_dir()
    assert FAKE_KEY not in res.stdout + res.stderr
