"""`ctl train ...`: a thin click layer over train/ (heavy imports stay inside the commands)."""

from __future__ import annotations

import json
import os
import sys

import click

set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config value after the file, e.g. --set train.learning_rate=1e-4 (repeatable).")
config_option = click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                             help="The TOML config file.")


@click.group("train")
def train_group():
    """Data preparation, QLoRA fine-tuning, memory estimates."""


@train_group.command("prepare")
@config_option
@set_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare_cmd(config_path, overrides, as_json):
    """Validate, dedupe, split, tokenize and pack the sources into Arrow datasets."""
    from train.config import load_config
    from train.data.prepare import prepare
    from train.schemas import DataConfig

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    report = prepare(load_config(DataConfig, config_path, overrides))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"prepared {report['accepted']} of {report['records']} records into {report['output_dir']}")
    for name, s in report["sources"].items():
        click.echo(f"  {name}: files {s['files_read']} read, {s['files_excluded']} excluded, "
                   f"{s['files_over_max']} over max_files; records {s['records']}, accepted {s['accepted']}, "
                   f"duplicates {s['duplicates']}, rejected {s['rejected_total']} {s['rejected'] or ''}")
    for split in ("train", "val"):
        s = report[split]
        click.echo(f"  {split}: {s['examples']} examples, {s['tokens']} tokens, {s['blocks']} blocks, "
                   f"packing efficiency {s['packing_efficiency']:.3f}")
    click.echo(f"  token lengths: {report['token_length_histogram']}")
    click.echo(f"  rejects: {report['rejects_by_reason'] or 'none'} -> {report['rejects_file']}")


def _torchrun_argv(nproc: int, config_path: str, overrides) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "trainctl", "train", "sft", "--config", config_path]
    for o in overrides:
        argv += ["--set", o]
    return argv


@train_group.command("sft")
@config_option
@set_option
def sft_cmd(config_path, overrides):
    """QLoRA fine-tuning; exits 0 only after the adapter is saved and declared."""
    from train.config import load_config
    from train.schemas import TrainConfig

    cfg = load_config(TrainConfig, config_path, overrides)
    import torch

    nproc = cfg.distributed.nproc or max(1, torch.cuda.device_count())
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        # One quantised replica per process; torchrun forwards SIGTERM to every rank.
        click.echo(f"starting {nproc} processes with torchrun", err=True)
        sys.stdout.flush()
        os.execv(sys.executable, _torchrun_argv(nproc, config_path, overrides))
    from train.sft.loop import run_sft

    run_sft(cfg)


@train_group.command("estimate")
@config_option
@set_option
@click.option("--gpu-mem", default="24GiB", show_default=True, help="Memory of one GPU, e.g. 24GiB (A10G), 80GB.")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Block length; default: max_seq_length from data.path/report.json.")
@click.option("--arch", default=None, help="Model preset when model.path is not on this machine "
              "(mistral-7b, mistral-7b-v0.1, llama-3-8b, qwen2.5-7b).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON (for the controller's preflight).")
def estimate_cmd(config_path, overrides, gpu_mem, seq_len, arch, as_json):
    """Estimate GPU memory for a train config: fits or not, and what to change. Exits 1 when it does not fit."""
    from agent.protocol.errors import ConfigError, TrainctlError
    from train.config import load_config
    from train.estimate import PRESETS, estimate, parse_bytes
    from train.schemas import TrainConfig

    if arch is not None and arch not in PRESETS:
        raise ConfigError(f"--arch {arch!r}: choose one of {', '.join(PRESETS)}")
    cfg = load_config(TrainConfig, config_path, overrides, validate=False)
    est = estimate(cfg, parse_bytes(gpu_mem), arch=PRESETS.get(arch) if arch else None, seq=seq_len)
    click.echo(json.dumps(est.as_dict(), indent=2) if as_json else est.render())
    if not est.fits:
        raise TrainctlError(f"the run does not fit in {gpu_mem}: {est.advice[0] if est.advice else ''}")


@train_group.command("make-tiny-model")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL with a text field to train the tokenizer on (default: built-in filler).")
def make_tiny_model_cmd(out, corpus):
    """Write a tiny Mistral-architecture model + tokenizer (for demos and tests) to OUT."""
    from train.tiny import make_tiny_model

    texts = None
    if corpus:
        with open(corpus, encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
    click.echo(f"tiny model written to {make_tiny_model(out, texts)}")
