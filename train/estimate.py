"""GPU memory estimate for a QLoRA run, so a run that cannot fit fails in seconds at preflight.

Sources the numbers are checked against (tests/train/test_estimate.py):
- QLoRA paper, Dettmers et al. 2023, arXiv:2305.14314, section 3: NF4 with blocksize 64 costs
  4 + 32/64 = 4.5 bits/param; double quantisation brings the constants to
  8/64 + 32/(64*256) = 0.127 bits/param, i.e. 4.127 bits/param for the quantised linears.
- A published bitsandbytes 4-bit Mistral-7B-Instruct-v0.2 checkpoint reports "Number of
  parameters 3,752,071,168" (hf.xbzza.cn/PJEDeveloper/Mistral-7B-Instruct-v0.2-4bit-...):
  packed uint8 weights count half, embeddings and lm_head stay whole. param_counts() matches.
- dev.to/sumanpro "QLoRA: Fine-Tuning a 7B Model on a 16GB GPU": Qwen2.5-7B loaded in NF4 +
  double quant (fp16 compute) reports a footprint of 5.44 GB.
- Activations: Korthikanti et al. 2022, arXiv:2205.05198, eq. 1: s*b*h*(34 + 5*a*s/h) bytes per
  layer in 16-bit without recomputation; the 5as/h term is the attention matrix, which SDPA /
  FlashAttention never materialise; with full checkpointing only each layer's input (2sbh) is
  kept, plus one layer's working set during its recompute. The MLP terms are rescaled to
  SwiGLU's intermediate size.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.protocol.errors import ConfigError
from train.schemas import TrainConfig

GiB = 1024**3
CUDA_OVERHEAD = int(0.8 * GiB)  # CUDA context, cuBLAS workspace, bitsandbytes buffers


@dataclass
class Arch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear in one decoder layer."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
                "down_proj": (self.intermediate, h)}


PRESETS = {
    "mistral-7b": Arch(4096, 32, 32, 8, 14336, 32768),  # Mistral-7B-v0.3
    "mistral-7b-v0.1": Arch(4096, 32, 32, 8, 14336, 32000),
    "llama-3-8b": Arch(4096, 32, 32, 8, 14336, 128256),
    "qwen2.5-7b": Arch(3584, 28, 28, 4, 18944, 152064),
}


def arch_from_folder(path: Path) -> Arch:
    c = json.loads((path / "config.json").read_text())
    return Arch(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                c.get("num_key_value_heads") or c["num_attention_heads"], c["intermediate_size"],
                c["vocab_size"], bool(c.get("tie_word_embeddings", False)))


def param_counts(a: Arch) -> tuple[int, int]:
    """(parameters in quantised linears, parameters kept whole: embeddings, lm_head, norms)."""
    linear = a.layers * sum(i * o for i, o in a.module_shapes().values())
    whole = a.vocab * a.hidden * (1 if a.tied else 2) + a.hidden * (2 * a.layers + 1)
    return linear, whole


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*(GiB|GB|MiB|MB|G)?\s*", text)
    if not m:
        raise ConfigError(f"--gpu-mem {text!r}: write a size like 24GiB, 80GB or 16000MiB")
    unit = {"GiB": GiB, "G": GiB, "GB": 10**9, "MiB": 1024**2, "MB": 10**6, None: GiB}[m.group(2)]
    size = int(float(m.group(1)) * unit)
    if size <= 0:
        raise ConfigError(f"--gpu-mem {text!r}: a GPU has more than 0 bytes; write its size, e.g. 24GiB")
    return size


@dataclass
class Estimate:
    parts: dict[str, int]
    total: int
    budget: int
    fits: bool
    advice: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        lines = [f"memory estimate per GPU ({', '.join(f'{k}={v}' for k, v in self.inputs.items())}):"]
        lines += [f"  {k:<28} {v / GiB:7.2f} GiB" for k, v in self.parts.items()]
        lines.append(f"  {'total':<28} {self.total / GiB:7.2f} GiB of {self.budget / GiB:.2f} GiB: "
                     + ("fits" if self.fits else "DOES NOT FIT"))
        lines += [f"  - {a}" for a in self.advice]
        return "\n".join(lines)


def breakdown(a: Arch, *, batch: int, seq: int, lora_r: int, targets: list[str], double_quant: bool = True,
              optim_bytes: int = 2, checkpointing: bool = True, act_bytes: int = 2, flash: bool = True) -> dict[str, int]:
    """Bytes per component for one GPU (see the module docstring for where each term comes from)."""
    linear, whole = param_counts(a)
    bits = 4.127 if double_quant else 4.5
    shapes = a.module_shapes()
    lora = a.layers * sum(lora_r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)
    s, b, h, i = seq, batch, a.hidden, a.intermediate
    kv = a.kv_heads * a.head_dim
    # One layer's working set in 16-bit: norms/residual inputs, q/k/v/o, SwiGLU gate/up/act/product.
    layer = s * b * act_bytes * (6 * h + 2 * (h + 2 * kv) + 4 * i)
    if not flash:
        layer += 2 * act_bytes * b * a.heads * s * s  # scores + softmax, materialised by eager attention
    acts = (a.layers * s * b * h * act_bytes + layer) if checkpointing else a.layers * layer
    return {
        "base weights (4-bit)": int(linear * bits / 8),
        "embeddings+lm_head (fp32)": whole * 4,  # prepare_model_for_kbit_training upcasts these
        "lora weights+grads": lora * 8,
        "optimizer state": lora * optim_bytes,
        "activations": int(acts),
        "logits+loss": b * s * a.vocab * (act_bytes + 4 + 4),  # logits, fp32 copy for the loss, its grad
        "cuda context+buffers": CUDA_OVERHEAD,
    }


def estimate(cfg: TrainConfig, gpu_mem: int, arch: Arch | None = None, seq: int | None = None) -> Estimate:
    """Whether `cfg` fits in `gpu_mem` bytes, with what to change when it does not."""
    if arch is None:
        p = Path(cfg.model.path) if cfg.model.path else None
        if p is not None and p.expanduser().is_dir():
            # A folder here is what sft would load: refuse what sft refuses (no weights, no tokenizer).
            from train.modelfolder import folder_problem

            if why := folder_problem(cfg.model.path, weights=True):
                raise ConfigError(f"model.path: {why}")
            arch = arch_from_folder(p.expanduser())
        elif cfg.model.path in PRESETS or not cfg.model.path:
            arch = PRESETS.get(cfg.model.path, PRESETS["mistral-7b"])
        else:
            raise ConfigError(f"model.path {cfg.model.path!r} has no config.json here; stage it, or pass --arch "
                              f"({', '.join(PRESETS)})")
    if seq is None:
        report = Path(cfg.data.path) / "report.json"
        if not report.is_file():
            raise ConfigError(f"no {report}: run `ctl train prepare` first or pass --seq-len")
        seq = int(json.loads(report.read_text())["max_seq_length"])
    t = cfg.train
    optim_bytes = 8 if t.optim == "adamw_torch" else 2
    kw = dict(batch=t.per_device_batch_size, seq=seq, lora_r=cfg.lora.r, targets=cfg.lora.target_modules,
              double_quant=cfg.quant.double_quant, optim_bytes=optim_bytes, checkpointing=t.gradient_checkpointing,
              flash=cfg.model.attn_implementation != "eager")
    parts = breakdown(arch, **kw)
    total = int(sum(parts.values()) * 1.1)  # allocator fragmentation
    est = Estimate(parts, total, gpu_mem, total <= gpu_mem,
                   inputs={"batch": t.per_device_batch_size, "seq": seq, "lora_r": cfg.lora.r})
    if not est.fits:
        est.advice = _advice(arch, kw, gpu_mem, t)
    return est


def _advice(arch: Arch, kw: dict, gpu_mem: int, t) -> list[str]:
    def fits(**change) -> bool:
        return sum(breakdown(arch, **{**kw, **change}).values()) * 1.1 <= gpu_mem

    tips = []
    if not kw["checkpointing"] and fits(checkpointing=True):
        tips.append("set train.gradient_checkpointing=true")
    for b in range(kw["batch"] - 1, 0, -1):
        if fits(batch=b):
            tips.append(f"set train.per_device_batch_size={b} and train.grad_accum="
                        f"{-(-t.grad_accum * kw['batch'] // b)} (same effective batch)")
            break
    seq = kw["seq"] // 2
    while seq >= 128 and not fits(batch=1, seq=seq):
        seq //= 2
    if seq >= 128:
        tips.append(f"prepare with tokenizer.max_seq_length={seq} (with per_device_batch_size=1)")
    if not tips:
        tips.append("use a GPU with more memory or a smaller base model")
    return tips
