"""Model, optimizer and process-group setup for QLoRA, driven only by the resolved config."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass

from agent.protocol.errors import ConfigError
from train.schemas import TrainConfig


@dataclass
class Dist:
    """This process's place in the run: rank, world size, device, and the few collectives used."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """DDP around the PEFT model when there is more than one process (one quantised replica each)."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if str(self.device).startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, net, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation group."""
        return net.no_sync() if self.world > 1 and not last else contextlib.nullcontext()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch

        t = torch.tensor([value], dtype=torch.float64)
        self.all_reduce_sum(t)
        return float(t[0]) / self.world

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch

        t = torch.tensor([float(flag)], dtype=torch.float64)
        self.all_reduce_sum(t)
        return bool(t[0] > 0)

    def all_reduce_sum(self, t) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.all_reduce(t, op=td.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.destroy_process_group()


def setup_distributed(cfg: TrainConfig) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else a single process."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device="cuda:0" if torch.cuda.is_available() else "cpu")
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = cfg.distributed.backend if cfg.distributed.backend != "auto" else ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    else:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    td.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local, device=f"cuda:{local}" if cuda else "cpu")


def compute_dtype(cfg: TrainConfig):
    import torch

    if cfg.quant.compute_dtype != "auto":
        return getattr(torch, cfg.quant.compute_dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def attn_implementation(cfg: TrainConfig, device) -> str:
    choice = cfg.model.attn_implementation
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    if choice == "auto":
        return "flash_attention_2" if has_fa2 and str(device).startswith("cuda") else "sdpa"
    if choice == "flash_attention_2" and not has_fa2:
        raise ConfigError("model.attn_implementation=flash_attention_2 but flash-attn is not installed; use sdpa or auto")
    return choice


def load_model(cfg: TrainConfig, dist: Dist):
    """The base model in 4-bit NF4 from a local folder, prepared for k-bit training, with LoRA."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    # peft still calls transformers' renamed gradient-checkpointing helpers; the warning is theirs, not the user's.
    warnings.filterwarnings("ignore", message=r".*(gradient_checkpointing_enable|is_gradient_checkpointing).*deprecated",
                            category=FutureWarning)
    dtype = compute_dtype(cfg)
    quant = None
    if cfg.quant.load_in_4bit:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant.quant_type,
                                   bnb_4bit_use_double_quant=cfg.quant.double_quant, bnb_4bit_compute_dtype=dtype)
    tok = AutoTokenizer.from_pretrained(cfg.model.path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.path, quantization_config=quant, dtype=dtype, device_map={"": dist.device},
        attn_implementation=attn_implementation(cfg, dist.device), local_files_only=True)
    model.config.use_cache = False
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    unknown = [m for m in cfg.lora.target_modules if m not in names]
    if unknown:
        raise ConfigError(f"lora.target_modules: {', '.join(unknown)} not in the model "
                          f"(it has e.g. {', '.join(sorted(n for n in names if n.endswith('proj'))[:8])})")
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(cfg.train.seed)  # identical LoRA init on every rank
    return get_peft_model(model, lora), tok


def build_optimizer(cfg: TrainConfig, params, total_steps: int, dist: Dist):
    """AdamW (paged 8-bit on GPU) and the warmup + decay schedule, from the config only."""
    import torch
    from transformers import get_scheduler

    t = cfg.train
    name = t.optim if t.optim != "auto" else ("paged_adamw_8bit" if str(dist.device).startswith("cuda") else "adamw_torch")
    if name == "paged_adamw_8bit":
        if not str(dist.device).startswith("cuda"):
            raise ConfigError("train.optim=paged_adamw_8bit needs a GPU; use adamw_torch or auto on CPU")
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[t.lr_scheduler]
    warmup = int(round(t.warmup_ratio * total_steps))
    return opt, get_scheduler(sched_name, opt, num_warmup_steps=warmup, num_training_steps=total_steps)
