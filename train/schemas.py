"""The two config files: data.toml (`ctl train prepare`) and train.toml (`ctl train sft`).

Defaults live here and nowhere else. `validate()` checks what types cannot (ranges, folders that
must exist, choices) so a bad run fails in seconds with one line, before any model is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol.errors import ConfigError


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}; got {value}")


def require_model_folder(key: str, path: str) -> Path:
    """A base model or tokenizer is only ever read from a local folder (HF_HUB_OFFLINE)."""
    if not path:
        raise ConfigError(f"{key} is not set: point it at a local model folder (staged from S3 by the controller)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{key}: model folder {p} does not exist (models are loaded from a local folder only)")
    if not (p / "config.json").is_file() and not (p / "tokenizer.json").is_file() \
            and not (p / "tokenizer_config.json").is_file():
        raise ConfigError(f"{key}: {p} holds no config.json or tokenizer files; is it a saved model folder?")
    return p


# --- data.toml -------------------------------------------------------------------------------

@dataclass
class SourceConfig:
    name: str = ""
    path: str = ""  # a local folder/file or an s3://bucket/prefix/
    include: list[str] = field(default_factory=lambda: ["**/*.jsonl", "**/*.json", "**/*.txt", "**/*.pdf"])
    exclude: list[str] = field(default_factory=list)
    max_files: int = 0  # 0 = no limit; files are taken in sorted key order
    text_field: str = ""  # "" = the [validation] default


@dataclass
class ValidationConfig:
    text_field: str = "text"
    format: str = "text"  # "text": a string field; "chat": a list of {role, content} rendered by the chat template
    messages_field: str = "messages"
    min_chars: int = 1
    max_reject_fraction: float = 0.5  # rejects above this share of all records fail the prepare


@dataclass
class TokenizerConfig:
    path: str = ""  # local folder holding the base model's tokenizer
    max_seq_length: int = 512
    add_eos: bool = True


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    seed: int = 42


@dataclass
class PrepareConfig:
    num_proc: int = 1
    batch_size: int = 1000  # records per tokenizer call
    writer_batch_size: int = 256  # packed blocks buffered before an Arrow write
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

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("no [[sources]] in the data config: add at least one with a path")
        names = set()
        for i, s in enumerate(self.sources):
            if not s.path:
                raise ConfigError(f"sources[{i}].path is empty: give a local folder or s3://bucket/prefix/")
            s.name = s.name or Path(s.path.rstrip("/")).name or f"source{i}"
            if s.name in names:
                raise ConfigError(f"sources[{i}].name {s.name!r} is used twice; names must be unique")
            names.add(s.name)
            _positive(f"sources[{i}].max_files", s.max_files, allow_zero=True)
        _choice("validation.format", self.validation.format, ("text", "chat"))
        if not 0 <= self.validation.max_reject_fraction <= 1:
            raise ConfigError("validation.max_reject_fraction must be between 0 and 1")
        if not 0 <= self.split.val_fraction < 1:
            raise ConfigError("split.val_fraction must be >= 0 and < 1")
        _positive("tokenizer.max_seq_length", self.tokenizer.max_seq_length)
        _positive("prepare.num_proc", self.prepare.num_proc)
        _positive("prepare.batch_size", self.prepare.batch_size)
        _positive("prepare.writer_batch_size", self.prepare.writer_batch_size)
        require_model_folder("tokenizer.path", self.tokenizer.path)


# --- train.toml ------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    path: str = ""
    attn_implementation: str = "auto"  # auto = flash_attention_2 when installed on a GPU, else sdpa


@dataclass
class QuantConfig:
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto = bfloat16 on GPUs that have it, float32 on CPU


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class DataRef:
    path: str = ""  # the output_dir of `ctl train prepare` (holds train/ and val/)


@dataclass
class TrainLoop:
    output_dir: str = ""  # "" = $TRAINCTL_OUTPUT_DIR, else ./output (see resolve_output_dir)
    per_device_batch_size: int = 1
    grad_accum: int = 16
    epochs: float = 1.0
    max_steps: int = 0  # > 0 caps optimizer steps
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 0.3
    optim: str = "auto"  # auto = paged_adamw_8bit on GPU, adamw_torch on CPU
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = 1
    eval_steps: int = 0  # 0 = evaluate once at the end
    max_eval_batches: int = 0  # 0 = the whole val split
    save_steps: int = 200  # 0 = no periodic checkpoints (SIGTERM still saves one)
    save_total_limit: int = 2
    checkpoint_on_sigterm: bool = True


@dataclass
class DistributedConfig:
    nproc: int = 0  # 0 = one process per visible GPU (1 on CPU); > 1 starts torchrun
    backend: str = "auto"  # auto = nccl on GPU, gloo on CPU


@dataclass
class DebugConfig:
    inject_nan_at_step: int = 0  # > 0: the loss becomes NaN at this optimizer step (tests, demo)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataRef = field(default_factory=DataRef)
    train: TrainLoop = field(default_factory=TrainLoop)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def validate(self) -> None:
        require_model_folder("model.path", self.model.path)
        _choice("model.attn_implementation", self.model.attn_implementation,
                ("auto", "sdpa", "eager", "flash_attention_2"))
        _choice("quant.quant_type", self.quant.quant_type, ("nf4", "fp4"))
        _choice("quant.compute_dtype", self.quant.compute_dtype, ("auto", "bfloat16", "float16", "float32"))
        _choice("train.optim", self.train.optim, ("auto", "paged_adamw_8bit", "adamw_torch"))
        _choice("train.lr_scheduler", self.train.lr_scheduler, ("cosine", "linear", "constant"))
        _choice("distributed.backend", self.distributed.backend, ("auto", "nccl", "gloo"))
        for key in ("lora.r", "lora.alpha", "train.per_device_batch_size", "train.grad_accum",
                    "train.learning_rate", "train.logging_steps", "train.save_total_limit"):
            section, name = key.split(".")
            _positive(key, getattr(getattr(self, section), name))
        _positive("train.epochs", self.train.epochs, allow_zero=self.train.max_steps > 0)
        if not 0 <= self.lora.dropout < 1:
            raise ConfigError("lora.dropout must be >= 0 and < 1")
        if not self.lora.target_modules:
            raise ConfigError("lora.target_modules is empty: name the projections to adapt, e.g. [\"q_proj\", \"v_proj\"]")
        if not self.data.path:
            raise ConfigError("data.path is not set: point it at the output_dir of `ctl train prepare`")
        if not (Path(self.data.path) / "train").is_dir():
            raise ConfigError(f"data.path: {self.data.path}/train does not exist; run `ctl train prepare` first")
        resolve_output_dir(self)


def resolve_output_dir(cfg: TrainConfig) -> Path:
    """The one rule: $TRAINCTL_OUTPUT_DIR (set by the agent) is the output dir; a config value that
    disagrees with it is an error, never silently dropped; without the env var, the config value,
    else ./output."""
    env = os.environ.get("TRAINCTL_OUTPUT_DIR", "")
    mine = cfg.train.output_dir
    if env and mine and Path(mine).resolve() != Path(env).resolve():
        raise ConfigError(f"train.output_dir={mine!r} disagrees with TRAINCTL_OUTPUT_DIR={env!r} set by the agent; "
                          "remove train.output_dir from the config when running under the agent")
    return Path(env or mine or "output")
