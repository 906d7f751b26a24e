"""The QLoRA trainer on CPU with real bitsandbytes 4-bit: learns, saves, reloads, resumes, fails loudly.

The trainer runs as the agent runs it: `ctl train sft` in a subprocess with TRAINCTL_* env vars,
reporting through the progress file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.tiny_model import prepare_tiny_dataset

CTL = str(Path(sys.executable).parent / "ctl")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packed(tiny_model, tmp_path_factory) -> Path:
    """A small, repetitive dataset prepared with the real `prepare` (blocks of 64 tokens)."""
    return prepare_tiny_dataset(tmp_path_factory.mktemp("sft-data"),
                                [f"alpha beta gamma delta {i} alpha beta gamma delta" for i in range(120)], tiny_model)


@pytest.fixture
def run(tmp_path, tiny_model, packed):
    """Start `ctl train sft` like the agent does; returns (popen, progress file, output dir)."""
    procs = []
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{packed}"\n[lora]\nr = 8\nalpha = 16\n'
                   "[train]\nper_device_batch_size = 4\ngrad_accum = 1\nlearning_rate = 5e-3\nwarmup_ratio = 0.0\n"
                   "max_grad_norm = 1.0\nmax_steps = 30\nsave_steps = 0\n")

    def start(*overrides: str):
        progress = tmp_path / "progress.jsonl"
        env = {**os.environ, "TRAINCTL_RUN_ID": "t-20260101-000000", "TRAINCTL_PROGRESS_FILE": str(progress),
               "TRAINCTL_OUTPUT_DIR": str(tmp_path / "out"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               # two test workers share two cores: spinning OpenMP threads would starve each other
               "OMP_NUM_THREADS": "1"}
        argv = [CTL, "train", "sft", "--config", str(cfg)] + [a for o in overrides for a in ("--set", o)]
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        procs.append(p)
        return p, progress, tmp_path / "out"

    yield start
    for p in procs:  # torchrun's ranks share the session: end the group by the leader's pid
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def lines(progress: Path) -> list[dict]:
    return [json.loads(x) for x in progress.read_text().splitlines()] if progress.exists() else []


def test_the_base_model_is_really_4bit_and_only_lora_trains(tiny_model, packed):
    import bitsandbytes as bnb

    from train.config import load_config
    from train.schemas import TrainConfig
    from train.sft.model import Dist, load_model

    cfg = load_config(TrainConfig, None, [f"model.path={tiny_model!s}", f"data.path={packed!s}"])
    model, _ = load_model(cfg, Dist())
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 14  # 7 linears x 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested
               for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj.lora_A" in n for n in trainable) and not any("gate_proj.lora" in n for n in trainable)


def test_loss_halves_then_the_adapter_is_saved_declared_and_reloads(run, tiny_model):
    p, progress, out = run("train.max_steps=30", "lora.dropout=0.0")
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    recs = lines(progress)
    phases = [r["phase"] for r in recs if "phase" in r]
    assert phases == ["setup", "loading_model", "training", "evaluating", "saving"]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31)) and steps[0]["total_steps"] == 30
    assert steps[-1]["loss"] < steps[0]["loss"] / 2, (steps[0]["loss"], steps[-1]["loss"])
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in steps)
    assert recs[-1] == {**recs[-1], "artifact": "adapter", "path": "adapter/", "final": True}
    saved = (out / "adapter" / "trainctl_train.toml").read_text()
    assert "max_steps = 30" in saved and "dropout = 0.0" in saved  # the resolved config, --set included
    assert "resolved: compute_dtype float32, optim AdamW, attn_implementation sdpa" in output  # auto, on a CPU

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tok = AutoTokenizer.from_pretrained(out / "adapter")
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, dtype=torch.float32,
                                                device_map={"": "cpu"})
    ids = tok("alpha beta gamma delta 7 alpha beta gamma delta", return_tensors="pt").input_ids
    with torch.no_grad():
        base_loss = float(base(input_ids=ids, labels=ids).loss)
        model = PeftModel.from_pretrained(base, out / "adapter").eval()
        tuned_loss = float(model(input_ids=ids, labels=ids).loss)
    assert tuned_loss < base_loss / 2, (base_loss, tuned_loss)  # the reloaded adapter is the trained one
    gen = model.generate(ids[:, :3], max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] == 3 + 6


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_after_a_checkpoint_a_restart_resumes_at_the_saved_step(run, sig):
    """SIGTERM (spot notice): a checkpoint at the current step, exit 143. SIGKILL: nothing more is
    written, the last periodic checkpoint is what a restart finds."""
    args = ("train.max_steps=48", "train.save_steps=4")
    p, progress, out = run(*args)
    deadline = time.monotonic() + 240
    while not any(r.get("artifact") == "checkpoint-4" for r in lines(progress)):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0]
        time.sleep(0.05)
    os.kill(p.pid, sig)
    output, _ = p.communicate(timeout=120)
    assert p.returncode == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL), output
    ckpts = [r for r in lines(progress) if str(r.get("artifact", "")).startswith("checkpoint-")]
    saved = int(ckpts[-1]["artifact"].split("-")[1])
    assert saved >= 4 and ckpts[-1]["final"] is False and (out / f"checkpoint-{saved}" / "trainer_state.pt").is_file()
    if sig == signal.SIGTERM:
        assert f"received signal {int(sig)}" in output
    assert not any(r.get("artifact") == "adapter" for r in lines(progress)) and not (out / "adapter").exists()

    before = len(lines(progress))
    p2, _, _ = run(*args)
    output2, _ = p2.communicate(timeout=300)
    assert p2.returncode == 0, output2
    assert f"resuming from {out / f'checkpoint-{saved}'} at step {saved}/48" in output2
    resumed = [r["step"] for r in lines(progress)[before:] if "loss" in r]
    assert resumed == list(range(saved + 1, 49))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_a_nan_loss_stops_the_run_with_a_clear_error_and_no_adapter(run):
    p, progress, out = run("debug.inject_nan_at_step=3", "train.save_steps=2")
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 1
    errors = [x for x in output.splitlines() if x.startswith("Error:")]
    assert errors == ["Error: training diverged: loss is nan at step 3; lower train.learning_rate (now 0.005) "
                      "or check the data; checkpoint-2 is the last good checkpoint"]
    last = [r for r in lines(progress) if "step" in r][-1]
    assert last["step"] == 3 and math.isnan(last["loss"])  # what the agent's nan_loss classifier reads
    assert [r["artifact"] for r in lines(progress) if "artifact" in r] == ["checkpoint-2"]
    assert not (out / "adapter").exists()


def test_two_processes_with_ddp_on_cpu_only_rank0_reports(run):
    p, progress, out = run("distributed.nproc=2", "train.max_steps=4", "train.save_steps=2")
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    recs = lines(progress)
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]  # one writer, not two
    assert [r["artifact"] for r in recs if "artifact" in r] == ["checkpoint-2", "adapter"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "starting 2 processes with torchrun" in output
