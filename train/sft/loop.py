"""`ctl train sft`: QLoRA supervised fine-tuning on a packed dataset, one GPU or many (DDP).

The loop is ours rather than a Trainer's so that each promise is visible in one place: every
hyperparameter comes from the resolved config (nothing hard-coded over it), progress lines are
written as steps finish, SIGTERM leads to a checkpoint, a NaN loss stops the run with a clear
error, and the final adapter is declared only after it is on disk — exit 0 comes after that.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

from agent.protocol.errors import ConfigError, TrainctlError
from train.config import to_dict, to_toml
from train.schemas import TrainConfig, resolve_output_dir
from train.sft import progress
from train.sft.checkpoint import latest_checkpoint, load_checkpoint, save_adapter, save_checkpoint
from train.sft.collate import collate_blocks, epoch_batches, real_tokens, steps_per_epoch
from train.sft.model import Dist, attn_implementation, build_optimizer, load_model, setup_distributed

SIGTERM_EXIT = 128 + signal.SIGTERM


class Stopper:
    """Remembers a SIGTERM/SIGINT so the loop can stop at a step boundary and checkpoint."""

    def __init__(self):
        self.signum = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, _frame):
        self.signum = signum
        print(f"received signal {signum}: stopping after the current step", file=sys.stderr, flush=True)


def load_split(path: Path, name: str, required: bool):
    """A packed split, memory-mapped from disk (`datasets.load_from_disk`)."""
    from datasets import load_from_disk

    p = path / name
    if not p.is_dir():
        if required:
            raise ConfigError(f"data.path: {p} does not exist; run `ctl train prepare` first")
        return None
    ds = load_from_disk(str(p))
    missing = {"input_ids", "seq_lengths"} - set(ds.column_names)
    if missing:
        raise ConfigError(f"data.path: {p} has no {', '.join(sorted(missing))} column "
                          f"(columns: {', '.join(ds.column_names)}); build it with `ctl train prepare`")
    return ds


def evaluate(model, ds, cfg: TrainConfig, dist: Dist, pad_id: int, flat: bool) -> float | None:
    """Token-weighted mean loss over the val split (sharded across ranks)."""
    import torch

    if ds is None or len(ds) == 0:
        return None
    progress.phase("evaluating")
    model.eval()
    batches = epoch_batches(len(ds), cfg.train.per_device_batch_size, 0, cfg.train.seed, dist.rank, dist.world)
    if cfg.train.max_eval_batches:
        batches = batches[: cfg.train.max_eval_batches]
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for idx in batches:
            batch = {k: v.to(dist.device) for k, v in collate_blocks([ds[i] for i in idx], pad_id, flat).items()}
            n = real_tokens(batch)
            total += torch.tensor([float(model(**batch, use_cache=False).loss) * n, n], dtype=torch.float64)
    dist.all_reduce_sum(total)
    model.train()
    return float(total[0] / total[1]) if total[1] else None


def run_sft(cfg: TrainConfig) -> Path:
    """Train, evaluate, save the adapter; returns its path. Raises TrainctlError on failure."""
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stopper = Stopper()
    dist = setup_distributed(cfg)
    out = resolve_output_dir(cfg)
    resolved = to_toml(to_dict(cfg))
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"resolved config (output_dir = {out}):\n{resolved}", flush=True)
    progress.phase("setup")
    torch.manual_seed(cfg.train.seed)
    data = Path(cfg.data.path)
    train_ds, val_ds = load_split(data, "train", True), load_split(data, "val", False)
    if len(train_ds) == 0:
        raise ConfigError(f"data.path: {data}/train holds no blocks")

    progress.phase("loading_model")
    model, tok = load_model(cfg, dist)
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    per_epoch = steps_per_epoch(len(train_ds), t.per_device_batch_size, t.grad_accum, dist.world)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * per_epoch))
    optimizer, scheduler = build_optimizer(cfg, params, total_steps, dist)
    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        step = state["step"]
        print(f"resuming from {ckpt} at step {step}/{total_steps}", flush=True)
    net = dist.wrap(model)

    progress.phase("training")
    model.train()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    flat = attn_implementation(cfg, dist.device) == "flash_attention_2"  # FA2 needs packed rows in one row
    micro_losses, tokens, t0 = [], 0, time.monotonic()
    while step < total_steps and not stopper.signum:
        epoch, done_in_epoch = divmod(step, per_epoch)
        batches = epoch_batches(len(train_ds), t.per_device_batch_size, epoch, t.seed, dist.rank, dist.world)
        groups = [batches[i:i + t.grad_accum] for i in range(0, len(batches), t.grad_accum)]
        for group in groups[done_in_epoch:]:
            for j, idx in enumerate(group):
                batch = {k: v.to(dist.device) for k, v in collate_blocks([train_ds[i] for i in idx], pad_id, flat).items()}
                with dist.no_sync(net, last=j == len(group) - 1):
                    loss = net(**batch, use_cache=False).loss  # a KV cache disables the packed-sequence mask
                    if cfg.debug.inject_nan_at_step == step + 1:
                        loss = loss * float("nan")
                    (loss / len(group)).backward()
                micro_losses.append(loss.detach().item())
                tokens += real_tokens(batch)
            step_loss = dist.mean(sum(micro_losses) / len(micro_losses))
            if not math.isfinite(step_loss):
                progress.step(step + 1, total_steps, step / per_epoch, step_loss, scheduler.get_last_lr()[0], 0.0)
                kept = latest_checkpoint(out)
                raise TrainctlError(f"training diverged: loss is {step_loss} at step {step + 1}; lower "
                                    f"train.learning_rate (now {t.learning_rate}) or check the data; "
                                    + (f"{kept.name} is the last good checkpoint" if kept else "no checkpoint yet"))
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = max(time.monotonic() - t0, 1e-9)
            if step % t.logging_steps == 0 or step == total_steps:
                lr = scheduler.get_last_lr()[0]
                tps = tokens * dist.world / elapsed
                progress.step(step, total_steps, step / per_epoch, step_loss, lr, tps)
                if dist.is_main:
                    print(f"step {step}/{total_steps} epoch {step / per_epoch:.3f} loss {step_loss:.4f} "
                          f"lr {lr:.3g} tokens/s {tps:.0f}", flush=True)
            micro_losses, tokens, t0 = [], 0, time.monotonic()
            stop = dist.any(bool(stopper.signum))
            if dist.is_main and ((t.save_steps and step % t.save_steps == 0 and step < total_steps)
                                 or (stop and t.checkpoint_on_sigterm)):
                save_checkpoint(out, step, model, optimizer, scheduler, {"epoch": step / per_epoch}, t.save_total_limit)
            dist.barrier()
            if stop:
                stopper.signum = stopper.signum or signal.SIGTERM
                break
            if t.eval_steps and step % t.eval_steps == 0 and step < total_steps:
                _report_eval(evaluate(model, val_ds, cfg, dist, pad_id, flat), step)
                progress.phase("training")
            if step >= total_steps:
                break
    if stopper.signum:
        raise SystemExit(SIGTERM_EXIT)
    eval_loss = evaluate(model, val_ds, cfg, dist, pad_id, flat)
    _report_eval(eval_loss, step)
    final = out / "adapter"
    if dist.is_main:
        progress.phase("saving")
        save_adapter(out, model, tok, resolved, {"step": step, "total_steps": total_steps, "eval_loss": eval_loss})
        print(f"adapter saved to {final}", flush=True)
    dist.barrier()
    dist.close()
    return final


def _report_eval(eval_loss: float | None, step: int) -> None:
    if eval_loss is None:
        return
    progress.emit(eval_loss=eval_loss, eval_at_step=step)  # no "step" key: not a training step
    if os.environ.get("RANK", "0") == "0":
        print(f"eval loss {eval_loss:.4f} at step {step}", flush=True)
