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
from tests.fixtures.tiny_train import write_train_toml
from tests.trainers.harness import CTL, REPO, Agents

pytestmark = pytest.mark.slow
RUN = "heal-20260101-120000"
CTL_EXE = str(Path(sys.executable).parent / "ctl")


def ctl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CTL, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_real_trainer_at_its_runtime_cap_checkpoints_and_fails_with_the_cap(agents, tmp_path, tiny_model, packed):
    # A run that would take far longer than its cap: stopped at 40 s, by when it is training (a stop
    # during model loading still saves after the first step: the trainer's handler is in place).
    cfg = write_train_toml(tmp_path, tiny_model, packed, max_steps=100000)
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


def oom_run(agents, tmp_path, tiny_model, packed, micro: int, min_batch: int, *extra: str):
    """The real trainer at `micro`, checkpointing every 2 steps, told to OOM at step 3 while the
    micro-batch is `min_batch` or more; returns (run store, local store folder, agent output)."""
    cfg = write_train_toml(tmp_path, tiny_model, packed, max_steps=6, batch=micro, save_steps=2,
                           tables=f"[debug]\ninject_oom_at_step = 3\ninject_oom_min_batch = {min_batch}\n")
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd", [CTL_EXE, "train", "sft", "--config", str(cfg)],
                        env=TRAINER_ENV, extra=list(extra))
    assert agents.wait(proc, 600) == 0, Agents.output(proc)
    return RunStore(LocalStore(store)), store, Agents.output(proc)


def test_real_trainer_recovers_from_oom_at_half_the_micro_batch(agents, tmp_path, tiny_model, packed):
    rs, store, out = oom_run(agents, tmp_path, tiny_model, packed, 4, 3, "--oom-retries", "2")
    done = rs.read_complete(RUN)
    assert done is not None, out
    assert done.reason.endswith("; recovered from OOM: batch 4 (step 2) -> 2"), done.reason
    [att] = rs.store.get_json(f"{RUN}/oom_attempts.json")["attempts"]
    assert att == {**att, "attempt": 1, "cause": "cuda_oom", "micro_batch": 4, "grad_accum": 1, "step": 2,
                   "next_micro_batch": 2, "next_grad_accum": 2}
    assert rs.read_metadata(RUN).oom_attempts == [att]
    log = rs.read_logs(RUN).data.decode()
    # One ordered log across both attempts: the OOM, then the restart at half the batch from checkpoint-2.
    oom = log.index("torch.OutOfMemoryError: CUDA out of memory")
    again = log.index("batch from the agent: train.per_device_batch_size = 2 (TRAINCTL_MICRO_BATCH), "
                      "train.grad_accum = 2 (TRAINCTL_GRAD_ACCUM)")
    resumed = log.index("resuming from")
    assert oom < again < resumed < log.index("step 6/6")
    assert "checkpoint-2 at step 2/6" in log[resumed:resumed + 200]
    assert rs.read_progress(RUN).step == 6

    st = ctl("status", RUN, "--store", str(store))
    assert "oom        recovered from OOM: batch 4 (step 2) -> 2 (1 restart)" in st.stdout, st.stdout
    first = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert first.returncode == 0, first.stderr
    text = " ".join(first.stdout.replace("│", " ").split())  # the console draws each message in a box
    assert text.count("🩹") == 1 and "🩹 Recovered from OOM: batch 4 -> 2 ─" in text, first.stdout
    assert "Reason: recovered from OOM: batch 4 -> 2 (grad_accum 1 -> 2, effective batch unchanged; restarted " \
           "from the newest checkpoint at step 2)" in text
    assert text.index("🩹") < text.index("✅")  # the recovery, then the completion
    assert "✅ Training completed" in first.stdout and "FAILED" not in first.stdout
    again = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert "🩹" not in again.stdout and "✅" not in again.stdout  # one notice, sent once


def test_real_trainer_with_retries_off_fails_on_oom_as_before(agents, tmp_path, tiny_model, packed):
    rs, store, out = oom_run(agents, tmp_path, tiny_model, packed, 4, 3)
    err = rs.read_error(RUN)
    assert err.cause == "cuda_oom" and "OOM retries" not in err.summary, out
    assert "torch.OutOfMemoryError: CUDA out of memory" in err.summary and err.last_step == 2
    assert rs.read_metadata(RUN).oom_attempts == [] and rs.store.get_json(f"{RUN}/oom_attempts.json") is None
    alert = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert "🔥 Training FAILED: cuda_oom" in alert.stdout and "🩹" not in alert.stdout
