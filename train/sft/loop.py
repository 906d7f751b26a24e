"""`ctl train sft`: QLoRA supervised fine-tuning on a packed dataset, one GPU or many (DDP).

The loop is ours rather than a Trainer's so that each promise is visible in one place: every
hyperparameter comes from the resolved config (nothing hard-coded over it), progress lines are
written as steps finish, SIGTERM leads to a checkpoint, a NaN loss stops the run with a clear
error, and the final adapter is declared only after it is on disk — exit 0 comes after that.

Read it top to bottom from `run_sft`: `setup` (data, model, optimizer, resume), `train` (each
optimizer step: `forward_backward`, `optimizer_step`, `log_step`, then checkpoint and eval when
due), `finish` (final eval, adapter).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.protocol.errors import ConfigError, TrainctlError
from train.config import to_dict, to_toml
from train.schemas import TrainConfig, resolve_output_dir
from train.sft import progress, tracking
from train.sft.checkpoint import latest_checkpoint, load_checkpoint, save_adapter, save_checkpoint
from train.sft.collate import collate_blocks, epoch_batches, real_tokens, steps_per_epoch
from train.sft.model import Dist, attn_implementation, build_optimizer, compute_dtype, load_model, setup_distributed

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


@dataclass
class Run:
    """What each step reads and moves on: the config, this process's place, the data, the model."""

    cfg: TrainConfig
    dist: Dist
    out: Path
    train_ds: Any
    val_ds: Any
    model: Any
    tok: Any
    optimizer: Any
    scheduler: Any
    per_epoch: int
    total_steps: int
    step: int = 0
    net: Any = None  # the model, under DDP when there are several processes
    params: list = field(default_factory=list)  # the trainable (LoRA) parameters
    pad_id: int = 0
    flat: bool = False  # FlashAttention-2 wants each batch's packed rows flattened into one

    @property
    def epoch(self) -> float:
        return self.step / self.per_epoch


def run_sft(cfg: TrainConfig) -> Path:
    """Train, evaluate, save the adapter; returns its path. Raises TrainctlError on failure."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stopper = Stopper()
    batch_from_env(cfg)
    dist = setup_distributed(cfg)
    out = resolve_output_dir(cfg)
    resolved = to_toml(to_dict(cfg))
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"resolved config (output_dir = {out}):\n{resolved}", flush=True)
    run = setup(cfg, dist, out)
    tracking.start(cfg.train.report_to, out, to_dict(cfg))
    try:
        train(run, stopper)
        if stopper.signum:
            raise SystemExit(SIGTERM_EXIT)
        return finish(run, resolved)
    finally:
        tracking.close()


def batch_from_env(cfg: TrainConfig) -> None:
    """The agent's OOM retry restarts us with TRAINCTL_MICRO_BATCH / TRAINCTL_GRAD_ACCUM (the same
    effective batch): they win over the config, and the run resumes from its newest checkpoint."""
    t, said = cfg.train, []
    for env, key in (("TRAINCTL_MICRO_BATCH", "per_device_batch_size"), ("TRAINCTL_GRAD_ACCUM", "grad_accum")):
        if (val := os.environ.get(env, "").strip()).isdigit() and int(val) >= 1:
            setattr(t, key, int(val))
            said.append(f"train.{key} = {val} ({env})")
    if said:
        print(f"batch from the agent: {', '.join(said)}", flush=True)
    progress.emit(micro_batch=t.per_device_batch_size, grad_accum=t.grad_accum)


def setup(cfg: TrainConfig, dist: Dist, out: Path) -> Run:
    """Data, 4-bit model with LoRA, optimizer and schedule; resumed from the latest checkpoint if any."""
    import torch

    progress.phase("setup")
    torch.manual_seed(cfg.train.seed)
    data = Path(cfg.data.path)
    train_ds, val_ds = load_split(data, "train", True), load_split(data, "val", False)
    if len(train_ds) == 0:
        raise ConfigError(f"data.path: {data}/train holds no blocks")

    progress.phase("loading_model")
    model, tok = load_model(cfg, dist)
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    per_epoch = steps_per_epoch(len(train_ds), t.per_device_batch_size, t.grad_accum, dist.world)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * per_epoch))
    optimizer, scheduler = build_optimizer(cfg, params, total_steps, dist)
    attn = attn_implementation(cfg, dist.device)
    # `auto` is decided here, on the box: say what it became (a GPU check reads this line).
    print(f"resolved: compute_dtype {str(compute_dtype(cfg)).removeprefix('torch.')}, "
          f"optim {type(optimizer).__name__}, attn_implementation {attn}", flush=True)
    run = Run(cfg, dist, out, train_ds, val_ds, model, tok, optimizer, scheduler, per_epoch, total_steps,
              params=params, pad_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
              flat=attn == "flash_attention_2")
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        run.step = load_checkpoint(ckpt, model, optimizer, scheduler)["step"]
        print(f"resuming from {ckpt} at step {run.step}/{total_steps}", flush=True)
    run.net = dist.wrap(model)
    return run


def train(run: Run, stopper: Stopper) -> None:
    """Optimizer steps until total_steps or a signal: each one logged, checkpointed and evaluated when due."""
    t, dist = run.cfg.train, run.dist
    progress.phase("training")
    run.model.train()
    t0 = time.monotonic()
    while run.step < run.total_steps and not stopper.signum:
        epoch, done_in_epoch = divmod(run.step, run.per_epoch)
        batches = epoch_batches(len(run.train_ds), t.per_device_batch_size, epoch, t.seed, dist.rank, dist.world)
        groups = [batches[i:i + t.grad_accum] for i in range(0, len(batches), t.grad_accum)]
        for group in groups[done_in_epoch:]:
            loss, tokens = forward_backward(run, group)
            optimizer_step(run, loss)
            log_step(run, loss, tokens, max(time.monotonic() - t0, 1e-9))
            t0 = time.monotonic()
            stop = dist.any(bool(stopper.signum))  # every rank stops at the same step
            if dist.is_main and ((t.save_steps and run.step % t.save_steps == 0 and run.step < run.total_steps)
                                 or (stop and t.checkpoint_on_sigterm)):
                save_checkpoint(run.out, run.step, run.model, run.optimizer, run.scheduler, {"epoch": run.epoch},
                                t.save_total_limit)
            dist.barrier()
            if stop:
                stopper.signum = stopper.signum or signal.SIGTERM
                break
            if t.eval_steps and run.step % t.eval_steps == 0 and run.step < run.total_steps:
                _report_eval(evaluate(run.model, run.val_ds, run.cfg, dist, run.pad_id, run.flat), run.step)
                progress.phase("training")
            if run.step >= run.total_steps:
                break


def forward_backward(run: Run, group: list) -> tuple[float, int]:
    """One accumulation group of micro-batches: (the step's loss averaged over ranks, this rank's tokens)."""
    micro_losses, tokens = [], 0
    for j, idx in enumerate(group):
        batch = {k: v.to(run.dist.device)
                 for k, v in collate_blocks([run.train_ds[i] for i in idx], run.pad_id, run.flat).items()}
        with run.dist.no_sync(run.net, last=j == len(group) - 1):
            loss = run.net(**batch, use_cache=False).loss  # a KV cache disables the packed-sequence mask
            if run.cfg.debug.inject_nan_at_step == run.step + 1:
                loss = loss * float("nan")
            _maybe_inject_oom(run)
            (loss / len(group)).backward()
        micro_losses.append(loss.detach().item())
        tokens += real_tokens(batch)
    return run.dist.mean(sum(micro_losses) / len(micro_losses)), tokens


def _maybe_inject_oom(run: Run) -> None:
    """debug.inject_oom_at_step: torch's own CUDA-OOM error, while the micro-batch is still too big."""
    d, t = run.cfg.debug, run.cfg.train
    if d.inject_oom_at_step == run.step + 1 and t.per_device_batch_size >= d.inject_oom_min_batch:
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                                     f"debug.inject_oom_at_step at micro-batch {t.per_device_batch_size})")


def optimizer_step(run: Run, loss: float) -> None:
    """Clip, step, schedule; a NaN or inf loss stops the run instead, naming the last good checkpoint."""
    import torch

    if not math.isfinite(loss):
        progress.step(run.step + 1, run.total_steps, run.epoch, loss, run.scheduler.get_last_lr()[0], 0.0)
        kept = latest_checkpoint(run.out)
        raise TrainctlError(f"training diverged: loss is {loss} at step {run.step + 1}; lower "
                            f"train.learning_rate (now {run.cfg.train.learning_rate}) or check the data; "
                            + (f"{kept.name} is the last good checkpoint" if kept else "no checkpoint yet"))
    torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1


def log_step(run: Run, loss: float, tokens: int, elapsed: float) -> None:
    """The progress line (and a log line on rank 0) every logging_steps and at the last step."""
    if run.step % run.cfg.train.logging_steps and run.step != run.total_steps:
        return
    lr = run.scheduler.get_last_lr()[0]
    tps = tokens * run.dist.world / elapsed
    progress.step(run.step, run.total_steps, run.epoch, loss, lr, tps)
    tracking.log(run.step, loss=loss, learning_rate=lr, tokens_per_s=tps)
    if run.dist.is_main:
        print(f"step {run.step}/{run.total_steps} epoch {run.epoch:.3f} loss {loss:.4f} "
              f"lr {lr:.3g} tokens/s {tps:.0f}", flush=True)


def finish(run: Run, resolved: str) -> Path:
    """The final evaluation, then the adapter saved and declared (rank 0); its path."""
    eval_loss = evaluate(run.model, run.val_ds, run.cfg, run.dist, run.pad_id, run.flat)
    _report_eval(eval_loss, run.step)
    final = run.out / "adapter"
    if run.dist.is_main:
        progress.phase("saving")
        save_adapter(run.out, run.model, run.tok, resolved,
                     {"step": run.step, "total_steps": run.total_steps, "eval_loss": eval_loss})
        print(f"adapter saved to {final}", flush=True)
        for folder in tracking.close():  # the trackers' files into the run's artifacts, beside the adapter
            progress.artifact(folder, f"{folder}/", final=True)
    run.dist.barrier()
    run.dist.close()
    return final


def _report_eval(eval_loss: float | None, step: int) -> None:
    if eval_loss is None:
        return
    progress.emit(eval_loss=eval_loss, eval_at_step=step)  # no "step" key: not a training step
    tracking.log(step, eval_loss=eval_loss)
    if os.environ.get("RANK", "0") == "0":
        print(f"eval loss {eval_loss:.4f} at step {step}", flush=True)
