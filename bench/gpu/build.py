"""Helpers the GPU check runs as subprocesses (transformers and torch only, no trainctl internals).

    python -m bench.gpu.build model OUT --tokenizer-from DIR [--size 1b|tiny]
        a random-initialised MistralForCausalLM built from a config (no hub), saved like a real one,
        with the tokenizer of DIR (the tiny model's, made by `ctl train make-tiny-model`)
    python -m bench.gpu.build data OUT --records N [--seed S]
        deterministic synthetic notes (JSONL, distinct records) for the prepare step
    python -m bench.gpu.build optim-state FILE
        what a checkpoint's optimizer state holds (key names, dtypes), as JSON
    python -m bench.gpu.build facts
        torch's view of the GPU (imports torch only; never allocates on the GPU)
    python -m bench.gpu.build verify
        the box's import set after the wheels are unpacked, and one real 4-bit round trip on the GPU
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

# ~1.1B parameters: TinyLlama-1.1B's shape in the Mistral architecture (32000 vocab, untied head).
SIZES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4, "vocab_size": 32000},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1024},
}

_WORDS = ("grid water tariff solar budget line policy note cause fix checkpoint spot resume adapter loss "
          "learning rate batch memory estimate token block packed arrow shard agent heartbeat store alert "
          "watcher slack runbook volume mount preflight instance region bucket prefix artifact verify "
          "complete error signal stale phase step epoch warmup cosine decay gradient clip norm").split()


def param_count(shape: dict) -> int:
    """Parameters of a Mistral-architecture model of this shape (untied embeddings and head)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return layers * per_layer + 2 * shape["vocab_size"] * h + h


def build_model(out: Path, tokenizer_from: Path, size: str = "1b", seed: int = 0) -> dict:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    shape = SIZES[size]
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from), local_files_only=True)
    if len(tok) > shape["vocab_size"]:
        raise SystemExit(f"tokenizer of {tokenizer_from} has {len(tok)} tokens, more than the model's {shape['vocab_size']}")
    config = MistralConfig(**shape, head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                           max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           initializer_range=0.02)
    t0 = time.monotonic()
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.generation_config.pad_token_id = tok.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    return {"path": str(out), "size": size, "params": n, "dtype": str(dtype).replace("torch.", ""),
            "device": device, "seconds": round(time.monotonic() - t0, 1), **shape}


def synthetic_records(n: int, seed: int = 0, words: int = 160):
    """`n` distinct deterministic notes of about `words` words each."""
    rng = random.Random(seed)
    for i in range(n):
        k = words + rng.randrange(-words // 4, words // 4 + 1)
        yield {"id": f"note-{i}", "text": " ".join(rng.choice(_WORDS) for _ in range(k)) + f" note {i}."}


def write_data(out: Path, records: int, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "notes.jsonl"
    with open(path, "w") as fh:
        for rec in synthetic_records(records, seed):
            fh.write(json.dumps(rec) + "\n")
    return {"path": str(path), "records": records, "bytes": path.stat().st_size}


def optim_state(path: Path) -> dict:
    """Key names and dtypes of a checkpoint's optimizer state: torch AdamW holds exp_avg/exp_avg_sq,
    bitsandbytes' 8-bit Adam state1/state2 (uint8 for tensors of >= 4096 elements) with qmap/absmax."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    opt = state.get("optimizer", state)
    keys: set[str] = set()
    dtypes: dict[str, set[str]] = {}
    for per_param in opt.get("state", {}).values():
        for k, v in per_param.items():
            keys.add(k)
            if hasattr(v, "dtype"):
                dtypes.setdefault(k, set()).add(str(v.dtype).replace("torch.", ""))
    return {"path": str(path), "params_with_state": len(opt.get("state", {})), "keys": sorted(keys),
            "dtypes": {k: sorted(v) for k, v in sorted(dtypes.items())},
            "group_keys": sorted(opt.get("param_groups", [{}])[0].keys() - {"params"})}


def gpu_facts() -> dict:
    """torch's view of this machine; `cuda` False when there is no usable CUDA GPU."""
    import importlib.util
    import platform

    facts = {"python": platform.python_version(), "executable": sys.executable}
    try:
        import torch
    except Exception as exc:
        return {**facts, "torch": None, "cuda": False, "why": f"torch is not importable: {exc}"[:300]}
    facts.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=bool(torch.cuda.is_available()))
    if not facts["cuda"]:
        facts["why"] = (f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False"
                        + ("; a CPU-only build" if torch.version.cuda is None else "") + ")")
        return facts
    props = torch.cuda.get_device_properties(0)
    facts.update(device_count=torch.cuda.device_count(), name=props.name, total_bytes=int(props.total_memory),
                 capability=f"{props.major}.{props.minor}", bf16=bool(torch.cuda.is_bf16_supported()),
                 flash_attn=importlib.util.find_spec("flash_attn") is not None)
    return facts


VERIFY_DISTS = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "pyarrow", "pandas",
                "click", "paramiko", "watchdog", "psutil", "tokenizers", "safetensors", "huggingface-hub")


def verify_box() -> dict:
    """Versions and origins of what the box path imports, then a real NF4 round trip through bitsandbytes."""
    import importlib
    import importlib.metadata as md
    import importlib.util
    import os

    out: dict = {"versions": {}, "errors": {}}
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is not None and spec.submodule_search_locations and not os.environ.get("BNB_CUDA_VERSION"):
        import torch

        from bench.gpu.wheels import bnb_cuda_override

        libs = [p.name for loc in spec.submodule_search_locations for p in Path(loc).glob("libbitsandbytes_*")]
        override = bnb_cuda_override(torch.version.cuda, libs)
        if override:
            os.environ["BNB_CUDA_VERSION"] = override
            out["bnb_cuda_version"] = override
    for dist in VERIFY_DISTS:
        try:
            out["versions"][dist] = md.version(dist)
        except md.PackageNotFoundError:
            out["versions"][dist] = None
    for mod in ("click", "paramiko", "watchdog", "psutil", "datasets", "pyarrow.parquet", "bitsandbytes", "peft",
                "transformers", "accelerate"):
        try:
            m = importlib.import_module(mod)
            out.setdefault("origins", {})[mod] = str(Path(getattr(m, "__file__", "") or "").parent)
        except Exception as exc:
            out["errors"][mod] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        import bitsandbytes.functional as F
        import torch

        x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        err = float((F.dequantize_4bit(q, state) - x).abs().mean())
        out["nf4_roundtrip_mean_abs_err"] = err
    except Exception as exc:
        out["errors"]["nf4_roundtrip"] = f"{type(exc).__name__}: {exc}"[:400]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.build")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("out", type=Path)
    m.add_argument("--tokenizer-from", type=Path, required=True)
    m.add_argument("--size", choices=sorted(SIZES), default="1b")
    d = sub.add_parser("data")
    d.add_argument("out", type=Path)
    d.add_argument("--records", type=int, required=True)
    d.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("optim-state")
    o.add_argument("file", type=Path)
    sub.add_parser("facts")
    sub.add_parser("verify")
    a = ap.parse_args(argv)
    if a.cmd == "facts":
        res = gpu_facts()
    elif a.cmd == "verify":
        res = verify_box()
    elif a.cmd == "model":
        res = build_model(a.out, a.tokenizer_from, a.size)
    elif a.cmd == "data":
        res = write_data(a.out, a.records, a.seed)
    else:
        res = optim_state(a.file)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
