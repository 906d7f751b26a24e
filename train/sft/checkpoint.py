"""Checkpoints and the final adapter, written so a reader never sees half of one.

Everything is written into `<name>.partial/` and renamed into place; a folder named
`checkpoint-N` is therefore always complete, and resume picks the highest N. The progress
line declaring an artifact is emitted only after the rename.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from train.sft import progress

STATE_FILE = "trainer_state.pt"
_CKPT = re.compile(r"checkpoint-(\d+)\Z")


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in the output dir, oldest first."""
    found = []
    for p in out.glob("checkpoint-*") if out.is_dir() else []:
        m = _CKPT.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def _publish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, extra: dict, keep: int) -> Path:
    """Adapter weights + optimizer/scheduler/RNG state at `step`; prunes to the newest `keep`."""
    import torch

    final = out / f"checkpoint-{step}"
    tmp = out / f"checkpoint-{step}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), **extra}
    torch.save(state, tmp / STATE_FILE)
    _publish(tmp, final)
    progress.artifact(final.name, f"{final.name}/", final=False)
    for _, old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore adapter weights and trainer state; returns the saved state dict (step etc.)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def save_adapter(out: Path, model, tokenizer, resolved_toml: str, metrics: dict) -> Path:
    """The final artifact: adapter weights, tokenizer, the resolved config and final metrics."""
    final = out / "adapter"
    tmp = out / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "trainctl_train.toml").write_text(resolved_toml)
    (tmp / "trainctl_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _publish(tmp, final)
    progress.artifact("adapter", "adapter/", final=True)
    return final
