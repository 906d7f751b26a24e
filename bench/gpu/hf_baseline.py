"""The same-run baseline of the GPU check: a plain HF Trainer + bitsandbytes + peft QLoRA loop.

Same model folder, same packed blocks (the Arrow dataset `ctl train prepare` wrote), same batch,
sequence, LoRA and optimizer settings as the trainctl run it is compared with, written the way the
transformers/peft docs write it (no trainctl code). Rows are plain causal-LM rows (labels = input
ids, padding masked), not trainctl's per-piece position ids. Prints one JSON line: median tokens/s
over the steps after warm-up (labelled tokens, as trainctl counts them) and torch's peak memory.

    python -m bench.gpu.hf_baseline --model DIR --data DIR/train --batch 8 --steps 20 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

WARMUP_STEPS = 2


def median_rate(tokens: list[int], seconds: list[float], warmup: int = WARMUP_STEPS) -> float | None:
    """Median of per-step tokens/s, leaving out the first `warmup` steps (compilation, autotuning)."""
    rates = [t / s for t, s in zip(tokens, seconds, strict=False) if s > 0][warmup:]
    return statistics.median(rates) if rates else None


def supported(cls, kwargs: dict) -> dict:
    """The keyword arguments this transformers version's `cls` accepts (they move between releases)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def run(a) -> dict:
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    cuda = torch.cuda.is_available()
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    t_load = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=quant, dtype=dtype,
                                                 device_map={"": "cuda:0" if cuda else "cpu"},
                                                 attn_implementation=a.attn, local_files_only=True)
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, bias="none",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    load_s = time.monotonic() - t_load
    ds = load_from_disk(a.data).select_columns(["input_ids"])
    counts: list[int] = []

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        counts.append(int((labels[:, 1:] != -100).sum()))  # the causal shift drops each row's first label
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not ends:
                ends.append(time.monotonic())

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.monotonic())

    args = TrainingArguments(**supported(TrainingArguments, dict(
        output_dir=str(a.workdir), per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.steps, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=max(1, round(0.03 * a.steps)),
        max_grad_norm=1.0, optim=a.optim, bf16=cuda and a.dtype == "bfloat16", fp16=cuda and a.dtype == "float16",
        logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0, remove_unused_columns=False,
        seed=42, disable_tqdm=True, use_cpu=not cuda)))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
    t0 = time.monotonic()
    trainer.train()
    seconds = [b - a_ for a_, b in zip(ends, ends[1:], strict=False)]
    steps = len(seconds)
    tokens = counts[:steps]  # the dataloader may have fetched one batch ahead
    res = {"tokens_per_s": median_rate(tokens, seconds), "steps": steps, "batch": a.batch,
           "tokens_per_step": statistics.median(tokens) if tokens else None, "train_s": round(time.monotonic() - t0, 2),
           "load_s": round(load_s, 2), "optim": a.optim, "dtype": a.dtype, "attn_implementation": a.attn,
           "step_seconds": [round(s, 4) for s in seconds]}
    if cuda:
        res.update(max_allocated_bytes=int(torch.cuda.max_memory_allocated()),
                   max_reserved_bytes=int(torch.cuda.max_memory_reserved()), device=torch.cuda.get_device_name(0))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.hf_baseline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the train split folder of a prepared dataset")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--optim", default="paged_adamw_8bit")
    ap.add_argument("--workdir", type=Path, default=Path("hf-baseline-out"))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a)
    if a.out:
        a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
