"""What the one did-you-mean knows beyond one schema: every config file's keys, and other tools' habits.

Each config file registers its schema here (train/schemas.py: train.toml and data.toml;
controller/config.py: run.toml), so an unknown key that lives in another file says where it
lives instead of pointing at a look-alike in the wrong file. HABITS maps the names other
trainers use (HF TrainingArguments, TRL, axolotl, peft) to ours. This module imports nothing of
the project, so every schema can register without an import cycle.
"""

from __future__ import annotations

SCHEMAS: dict[str, type] = {}  # file label -> its root schema, in registration order

# Another tool's leaf name -> our dotted key (the file is found by which schema has the key).
HABITS: dict[str, str] = {
    "lr": "train.learning_rate",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.per_device_batch_size",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "micro_batch_size": "train.per_device_batch_size",
    "train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_accumulation": "train.grad_accum",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "lora_r": "lora.r",
    "rank": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
    "model_name_or_path": "model.path",
    "base_model": "model.path",
    "model_name": "model.path",
    "dataset_path": "data.path",
    "max_seq_length": "tokenizer.max_seq_length",
    "max_seq_len": "tokenizer.max_seq_length",
    "sequence_len": "tokenizer.max_seq_length",
    "cutoff_len": "tokenizer.max_seq_length",
    "max_length": "tokenizer.max_seq_length",
    "bnb_4bit_quant_type": "quant.quant_type",
    "bnb_4bit_compute_dtype": "quant.compute_dtype",
    "bnb_4bit_use_double_quant": "quant.double_quant",
    "lr_scheduler_type": "train.lr_scheduler",
    "warmup": "train.warmup_ratio",
}

# What to do after moving a key to another file, when there is more to it than the move.
AFTER_MOVE: dict[str, str] = {
    "data.toml": "; then re-run ctl train prepare",
}


def register(label: str, root: type) -> None:
    """Make `root` (a file's schema) known to every did-you-mean under `label` (e.g. "train.toml")."""
    SCHEMAS[label] = root


def label_of(root: type) -> str | None:
    """The file label a schema registered under, or None."""
    return next((label for label, r in SCHEMAS.items() if r is root), None)
