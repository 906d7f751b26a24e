"""A plain HF Trainer script, written the way users write theirs, for the tiny model on CPU.

Nothing in it knows about trainctl except `--callback`, which adds `TrainctlCallback` the way the
README tells users to. It trains a causal LM for `--steps` steps (logging every step by default, a checkpoint
every `--save-steps`, an evaluation every `--eval-steps`), saves the final model to the output
dir, and writes the Trainer's own log history to `--history` so tests can compare against it.
"""

from __future__ import annotations

import argparse
import json


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-steps", type=int, default=2)
    ap.add_argument("--eval-steps", type=int, default=3)
    ap.add_argument("--logging-steps", type=int, default=1)
    ap.add_argument("--history", default="")
    ap.add_argument("--callback", action="store_true", help="add trainctl's TrainctlCallback")
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    texts = [f"the run writes a checkpoint before the box goes away note {i}." for i in range(24)]
    ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"], truncation=True, max_length=32),
                                                 batched=True, remove_columns=["text"])
    split = ds.train_test_split(test_size=4, seed=0)
    training_args = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=2, per_device_eval_batch_size=2,
        learning_rate=1e-3, logging_steps=args.logging_steps, save_steps=args.save_steps, eval_strategy="steps",
        eval_steps=args.eval_steps, report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0)
    callbacks = []
    if args.callback:
        from train.hf_callback import TrainctlCallback

        callbacks.append(TrainctlCallback())
    trainer = Trainer(model=model, args=training_args, train_dataset=split["train"], eval_dataset=split["test"],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=callbacks)
    trainer.train()
    trainer.save_model()
    if args.history:
        with open(args.history, "w") as fh:
            json.dump(trainer.state.log_history, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
