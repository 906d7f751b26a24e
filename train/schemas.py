"""The two config files: data.toml (`ctl train prepare`) and train.toml (`ctl train sft`).

Defaults and limits (choices, minimums) live here and nowhere else; the config walker
(`train.schema_walk`) enforces them. `check()` adds what one field cannot say (cross-field
rules, folders that must exist) so a bad run fails in seconds, every mistake at once, before
any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol.errors import ConfigError
from train import keyhints
from train.schema_walk import Problem, setting


def model_folder_problem(path: str, weights: bool = False) -> str | None:
    """Why `path` is no model (`weights`) or tokenizer folder, else None: they are only read from a
    local folder (HF_HUB_OFFLINE). The checks are train.modelfolder's."""
    from train.modelfolder import folder_problem

    return folder_problem(path, weights=weights)


def _positive(key: str, value: float) -> list[Problem]:
    return [] if value > 0 else [Problem(key, f"{value} must be > 0")]


# --- data.toml -------------------------------------------------------------------------------

@dataclass
class SourceConfig:
    name: str = ""
    path: str = ""  # a local folder/file or an s3://bucket/prefix/
    include: list[str] = field(default_factory=lambda: ["**/*.jsonl", "**/*.json", "**/*.txt", "**/*.pdf"])
    exclude: list[str] = field(default_factory=list)
    max_files: int = setting(0, min=0)  # 0 = no limit; files are taken in sorted key order
    text_field: str = ""  # "" = the [validation] default


@dataclass
class ValidationConfig:
    text_field: str = "text"
    format: str = setting("text", choices=("text", "chat"))  # "text": a string field; "chat": a list of {role, content} rendered by the chat template
    messages_field: str = "messages"
    min_chars: int = 1
    max_reject_fraction: float = setting(0.5, min=0, max=1)  # rejects above this share of all records fail the prepare


@dataclass
class TokenizerConfig:
    path: str = ""  # local folder holding the base model's tokenizer
    max_seq_length: int = setting(512, min=1)
    add_eos: bool = True


@dataclass
class SplitConfig:
    val_fraction: float = 0.1  # share held out for validation: >= 0 and < 1
    seed: int = 42


@dataclass
class PrepareConfig:
    num_proc: int = setting(1, min=1)
    batch_size: int = setting(1000, min=1)  # records per tokenizer call
    writer_batch_size: int = setting(256, min=1)  # packed blocks buffered before an Arrow write
    pdf_max_pages: int = 5
    progress: bool = True


@dataclass
class DataConfig:
    output_dir: str = "data/prepared"
    sources: list[SourceConfig] = field(default_factory=list)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def check(self, disk: bool = True) -> list[Problem]:
        """Cross-field rules (and, with `disk`, the tokenizer folder). Unnamed sources are named
        here after their path, so the name every report uses is the resolved one."""
        out = [] if self.sources else [Problem("sources", "no [[sources]] in the data config; add at least one "
                                                          "with a path")]
        names = set()
        for i, s in enumerate(self.sources):
            if not s.path:
                out.append(Problem(f"sources[{i}].path", "empty; give a local folder or s3://bucket/prefix/"))
            s.name = s.name or Path(s.path.rstrip("/")).name or f"source{i}"
            if s.name in names:
                out.append(Problem(f"sources[{i}].name", f"{s.name!r} is used twice; names must be unique"))
            names.add(s.name)
        if not 0 <= self.split.val_fraction < 1:
            out.append(Problem("split.val_fraction", f"{self.split.val_fraction} must be >= 0 and < 1"))
        if disk and (why := model_folder_problem(self.tokenizer.path)):
            out.append(Problem("tokenizer.path", why))
        return out


# --- train.toml ------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    path: str = ""
    attn_implementation: str = setting("auto", choices=("auto", "sdpa", "eager", "flash_attention_2"))  # auto = flash_attention_2 when installed on a GPU, else sdpa


@dataclass
class QuantConfig:
    load_in_4bit: bool = True
    quant_type: str = setting("nf4", choices=("nf4", "fp4"))
    double_quant: bool = True
    compute_dtype: str = setting("auto", choices=("auto", "bfloat16", "float16", "float32"))  # auto = bfloat16 on GPUs that have it, float32 on CPU


@dataclass
class LoraConfig:
    r: int = setting(16, min=1)
    alpha: int = setting(32, min=1)
    dropout: float = 0.05  # >= 0 and < 1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class DataRef:
    path: str = ""  # the output_dir of `ctl train prepare` (holds train/ and val/)


TRACKERS = ("tensorboard", "wandb")  # train.report_to's choices (train.sft.tracking writes them)


@dataclass
class TrainLoop:
    output_dir: str = ""  # "" = $TRAINCTL_OUTPUT_DIR, else ./output (see resolve_output_dir)
    per_device_batch_size: int = setting(1, min=1)
    grad_accum: int = setting(16, min=1)
    epochs: float = 1.0  # > 0, or 0 when max_steps is set
    max_steps: int = setting(0, min=0)  # > 0 caps optimizer steps
    learning_rate: float = 2e-4
    lr_scheduler: str = setting("cosine", choices=("cosine", "linear", "constant"))
    warmup_ratio: float = setting(0.03, min=0, max=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    optim: str = setting("auto", choices=("auto", "paged_adamw_8bit", "adamw_torch"))  # auto = paged_adamw_8bit on GPU, adamw_torch on CPU
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = setting(1, min=1)
    eval_steps: int = setting(0, min=0)  # 0 = evaluate once at the end
    max_eval_batches: int = setting(0, min=0)  # 0 = the whole val split
    save_steps: int = setting(200, min=0)  # 0 = no periodic checkpoints (SIGTERM still saves one)
    save_total_limit: int = setting(2, min=1)
    checkpoint_on_sigterm: bool = True
    report_to: list[str] = setting([])  # experiment tracking (train.sft.tracking): [], ["tensorboard"], ["wandb"] or both


@dataclass
class DistributedConfig:
    nproc: int = setting(0, min=0)  # 0 = one process per visible GPU (1 on CPU); > 1 starts torchrun
    backend: str = setting("auto", choices=("auto", "nccl", "gloo"))  # auto = nccl on GPU, gloo on CPU


@dataclass
class DebugConfig:
    inject_nan_at_step: int = setting(0, min=0)  # > 0: the loss becomes NaN at this optimizer step (tests, demo)
    # > 0: torch.OutOfMemoryError at this optimizer step while the micro-batch is at least inject_oom_min_batch
    inject_oom_at_step: int = setting(0, min=0)
    inject_oom_min_batch: int = setting(2, min=1)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataRef = field(default_factory=DataRef)
    train: TrainLoop = field(default_factory=TrainLoop)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def check(self, disk: bool = True) -> list[Problem]:
        """Cross-field rules; with `disk`, also the model and data folders and the agent's output dir."""
        t, out = self.train, _positive("train.learning_rate", self.train.learning_rate)
        if t.epochs < 0 or (t.epochs == 0 and not t.max_steps):
            out.append(Problem("train.epochs", f"{t.epochs} must be > 0 (or 0 with train.max_steps set)"))
        if not 0 <= self.lora.dropout < 1:
            out.append(Problem("lora.dropout", f"{self.lora.dropout} must be >= 0 and < 1"))
        for name in t.report_to:
            if name not in TRACKERS:
                out.append(Problem("train.report_to", f"{name!r} is not one of {', '.join(TRACKERS)}"))
        if not self.lora.target_modules:
            out.append(Problem("lora.target_modules", 'empty; name the projections to adapt, e.g. ["q_proj", "v_proj"]'))
        if not disk:
            return out
        if why := model_folder_problem(self.model.path, weights=True):
            out.append(Problem("model.path", why))
        if not self.data.path:
            out.append(Problem("data.path", "not set; point it at the output_dir of `ctl train prepare`"))
        elif not (Path(self.data.path) / "train").is_dir():
            out.append(Problem("data.path", f"{self.data.path}/train does not exist; run `ctl train prepare` first"))
        if why := output_dir_conflict(self):
            out.append(Problem("train.output_dir", why))
        return out


def output_dir_conflict(cfg: TrainConfig) -> str | None:
    """Why train.output_dir cannot be used under the agent, else None."""
    env, mine = os.environ.get("TRAINCTL_OUTPUT_DIR", ""), cfg.train.output_dir
    if env and mine and Path(mine).resolve() != Path(env).resolve():
        return (f"{mine!r} disagrees with TRAINCTL_OUTPUT_DIR={env!r} set by the agent; "
                "remove train.output_dir from the config when running under the agent")
    return None


def resolve_output_dir(cfg: TrainConfig) -> Path:
    """The one rule: $TRAINCTL_OUTPUT_DIR (set by the agent) is the output dir; a config value that
    disagrees with it is an error, never silently dropped; without the env var, the config value,
    else ./output."""
    if why := output_dir_conflict(cfg):
        raise ConfigError(f"train.output_dir: {why}")
    return Path(os.environ.get("TRAINCTL_OUTPUT_DIR", "") or cfg.train.output_dir or "output")


# The one did-you-mean knows every file's keys (train/keyhints.py); run.toml registers in controller/config.py.
keyhints.register("train.toml", TrainConfig)
keyhints.register("data.toml", DataConfig)
