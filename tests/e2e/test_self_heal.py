"""Runs that look after themselves, on the real tiny 4-bit QLoRA trainer under the real agent (local
folder store): a run past its runtime cap is stopped gracefully with its checkpoint stored, and
`ctl status` and the alert say which cap and how to raise it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.e2e.harness import TRAINER_ENV
from tests.fixtures.tiny_model import prepare_tiny_dataset
from tests.trainers.harness import CTL, REPO, Agents

pytestmark = pytest.mark.slow
RUN = "heal-20260101-120000"
CTL_EXE = str(Path(sys.executable).parent / "ctl")


@pytest.fixture(scope="module")
def packed(tiny_model, tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("heal-data"),
                                [f"alpha beta gamma delta {i} alpha beta gamma delta" for i in range(120)], tiny_model)


@pytest.fixture
def agents(tmp_path):
    a = Agents(tmp_path)
    yield a
    a.close()


def train_toml(tmp_path: Path, tiny_model: Path, packed: Path, max_steps: int) -> Path:
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{packed}"\n[lora]\nr = 8\nalpha = 16\n'
                   f"[train]\nper_device_batch_size = 4\ngrad_accum = 1\nlearning_rate = 5e-3\nwarmup_ratio = 0.0\n"
                   f"max_grad_norm = 1.0\nmax_steps = {max_steps}\nsave_steps = 0\n")
    return cfg


def ctl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CTL, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_real_trainer_at_its_runtime_cap_checkpoints_and_fails_with_the_cap(agents, tmp_path, tiny_model, packed):
    # A run that would take far longer than its cap: stopped at 40 s, by when it is training (a stop
    # during model loading still saves after the first step: the trainer's handler is in place).
    cfg = train_toml(tmp_path, tiny_model, packed, max_steps=100000)
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd", [CTL_EXE, "train", "sft", "--config", str(cfg)],
                        env=TRAINER_ENV, extra=["--max-runtime", "40s", "--stop-grace-s", "120"])
    assert agents.wait(proc, 400) == 0, Agents.output(proc)
    rs = RunStore(LocalStore(store))
    err = rs.read_error(RUN)
    assert err.cause == "runtime_cap", Agents.output(proc)
    assert err.signal is None and err.exit_code == 143  # it saved and exited by itself, no SIGTERM/SIGKILL
    step = err.last_step
    assert step and f"checkpoint-{step} (step {step}) is in the store at" in err.summary, err.summary
    assert err.summary.startswith("runtime cap reached: ran 4") and "(max_runtime 40s)" in err.summary
    assert err.checkpoint.endswith(f"artifacts/checkpoint-{step}/")
    assert f"{RUN}/artifacts/checkpoint-{step}/trainer_state.pt" in set(rs.store.list(f"{RUN}/artifacts/"))
    log = rs.read_logs(RUN).data.decode()
    assert "received signal 2: stopping after the current step" in log

    st = ctl("status", RUN, "--store", str(store))
    assert "failed     runtime_cap" in st.stdout and "budget     runtime 0s left of 40s" in st.stdout, st.stdout
    alert = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert "🔥 Training FAILED: runtime_cap" in alert.stdout, alert.stdout
    assert "raise max_runtime under [trainer] in run.toml" in alert.stdout
