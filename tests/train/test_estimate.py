"""`ctl train estimate` against published figures (sources in train/estimate.py) and real layers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from train.config import load_config
from train.estimate import PRESETS, GiB, arch_from_folder, breakdown, estimate, param_counts, parse_bytes
from train.schemas import TrainConfig
from trainctl.cli import main


def test_parameter_count_matches_a_published_4bit_mistral_checkpoint():
    # bitsandbytes packs two 4-bit weights per uint8 "parameter"; the checkpoint reports 3,752,071,168.
    linear, whole = param_counts(PRESETS["mistral-7b-v0.1"])
    assert linear // 2 + whole == 3_752_071_168


def test_loaded_4bit_footprint_matches_the_published_qwen_figure():
    # Published: Qwen2.5-7B in NF4 + double quant, fp16 embeddings/lm_head: footprint 5.44 GB.
    linear, whole = param_counts(PRESETS["qwen2.5-7b"])
    loaded = linear * 4.127 / 8 + whole * 2
    assert loaded / 1e9 == pytest.approx(5.44, rel=0.05)


def test_qlora_paper_bits_per_parameter():
    a = PRESETS["mistral-7b"]
    linear, _ = param_counts(a)
    dq = breakdown(a, batch=1, seq=512, lora_r=16, targets=["q_proj"], double_quant=True)["base weights (4-bit)"]
    plain = breakdown(a, batch=1, seq=512, lora_r=16, targets=["q_proj"], double_quant=False)["base weights (4-bit)"]
    assert dq / linear * 8 == pytest.approx(4.127, rel=1e-3)
    assert plain / linear * 8 == pytest.approx(4.5, rel=1e-3)


def test_lora_parameter_count_matches_peft_on_the_real_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = breakdown(arch_from_folder(tiny_model), batch=1, seq=8, lora_r=4, targets=targets)
    assert parts["lora weights+grads"] == trainable * 8  # fp32 weight + fp32 grad
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    linear, whole = param_counts(arch_from_folder(tiny_model))
    assert linear + whole == sum(p.numel() for p in base.parameters())


def test_a_7b_run_that_fits_on_an_a10g_and_one_that_does_not():
    cfg = TrainConfig()
    cfg.train.per_device_batch_size = 1
    small = estimate(cfg, 24 * GiB, arch=PRESETS["mistral-7b"], seq=512)
    assert small.fits and not small.advice  # the seeds' g5 runs: batch 1, seq 512 on 24 GB
    cfg.train.per_device_batch_size = 8
    big = estimate(cfg, 24 * GiB, arch=PRESETS["mistral-7b"], seq=4096)
    assert not big.fits
    assert any("per_device_batch_size=" in a for a in big.advice)
    cfg.train.gradient_checkpointing = False
    cfg.train.per_device_batch_size = 2
    nock = estimate(cfg, 24 * GiB, arch=PRESETS["mistral-7b"], seq=4096)
    assert not nock.fits and nock.advice[0] == "set train.gradient_checkpointing=true"


def test_cli_reads_the_model_folder_and_the_prepared_seq_len(tmp_path, tiny_model):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "report.json").write_text(json.dumps({"max_seq_length": 64}))
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{tmp_path / "prepared"}"\n')
    ok = CliRunner().invoke(main, ["train", "estimate", "--config", str(cfg), "--gpu-mem", "24GiB", "--json"])
    assert ok.exit_code == 0, ok.output
    est = json.loads(ok.output)
    assert est["fits"] and est["inputs"]["seq"] == 64
    tight = CliRunner().invoke(main, ["train", "estimate", "--config", str(cfg), "--gpu-mem", "100MiB"])
    assert tight.exit_code == 1
    assert tight.output.strip().splitlines()[-1].startswith("Error: the run does not fit in 100MiB")
    bad = CliRunner().invoke(main, ["train", "estimate", "--config", str(cfg), "--gpu-mem", "lots"])
    assert bad.exit_code == 2 and "write a size like 24GiB" in bad.output


def test_sizes_parse():
    assert parse_bytes("24GiB") == 24 * GiB
    assert parse_bytes("80GB") == 80 * 10**9
    assert load_config(TrainConfig, None, ["train.per_device_batch_size=3"], validate=False).train.per_device_batch_size == 3
