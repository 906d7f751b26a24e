"""The GPU check (issue 16): trainctl's GPU-only paths, run for real the day a GPU is lent.

Run it from the repository root, on a machine with an NVIDIA GPU and CUDA PyTorch:

    make gpu-wheels                      # once, where there is network: bench/gpu/wheels/ (~50 MiB)
    bash bench/gpu_check.sh [--out DIR]  # on the GPU machine: project tree + bench/gpu/wheels only

With the device tool: command `bash bench/gpu_check.sh --out "$OUT"`, carry `["bench/gpu/wheels"]`.
Without a usable CUDA GPU it refuses in one line (exit 3) and writes nothing. Exit 0 when every
part passed, 1 when one failed, 2 on bad arguments.

Parts (each drives trainctl only through its CLI, `CTL` below, as subprocesses):
1. launch: the tiny model (`ctl train make-tiny-model`) and the bundled notes (`ctl train prepare`,
   train/examples/demo-data.toml); `ctl launch --local` of a real 4-bit QLoRA run with
   compute_dtype, optim and attn_implementation all `auto`, followed with `ctl tail` to `_complete`.
   Checked: the run completes; auto resolved to bfloat16, bitsandbytes' PagedAdamW8bit and sdpa
   (flash_attention_2 when flash-attn is installed); the heartbeats carry the GPU's name, memory and
   utilisation as the real nvidia-smi reports them.
2. throughput: a random-initialised ~1.1B Mistral-architecture model built from a config (no hub),
   4-bit, sequence 1024, synthetic notes: median tokens/s and torch's peak memory of the trainctl
   run, next to `ctl train estimate --json` for the same config and to a plain HF Trainer +
   bitsandbytes + peft loop on the same model, batch and data (bench/gpu/hf_baseline.py); ratios
   printed, no targets. The run's checkpoint must hold 8-bit (uint8) optimizer state.
3. oom: a batch of 1024 x 1024 tokens. `ctl launch` must refuse it from the estimate; launched anyway
   (an explicit trainer command skips the memory check), it must fail with `_error` cause `cuda_oom`
   and the remediation that lowers per_device_batch_size.
4. everything lands in --out as gpu-check.json and gpu-check.md (a markdown table), with the logs of
   every command under --out/logs/.

What trainctl resolved for `auto` is not in its own record (the logged "resolved config" keeps
`auto`), so a probe (bench/gpu/probe/sitecustomize.py, active only in these runs) notes what the
trainer's from_pretrained and optimizer really got and torch's peak CUDA memory at exit.

Wheels: the machine has torch, transformers, peft and accelerate but no network, bitsandbytes,
datasets or boto3. bench/gpu/wheels.py says which wheels the box path needs (bitsandbytes; datasets
with pyarrow, pandas, dill, multiprocess, xxhash; click, watchdog; paramiko with cryptography,
bcrypt, pynacl, cffi, invoke), measured with `pip download --no-deps`: 114.1 MiB as published,
49.7 MiB trimmed (bitsandbytes 12.8 with only its CUDA 12.6+ builds, pyarrow 23.1 without
Flight/S3/cloud filesystems, pandas 6.8 without tests; LZMA-recompressed), so it fits the 60 MiB.
boto3/botocore (17 MiB) are left out: the local-folder store does not import them. Only the missing
ones are unpacked (under --work/site, first on PYTHONPATH). The binary wheels are for one Python
version (GPU_PY, default the project venv's 3.11): on a box with another Python the check stops
at setup with the `make gpu-wheels GPU_PY=3.x` to run.

Time: estimated at about 5 minutes from a bare start on an H200 (setup 15 s, launch 60 s,
throughput 150 s, oom 60 s), not yet measured on a GPU; --budget-s (default 420) skips a part
that would not finish in time, and says so in the report.
Not covered: NCCL (one GPU), FlashAttention-2 unless flash-attn is installed on the machine.

Modules (bench/gpu/): this one holds the arguments, the order of the parts, the time budget, the
report's meta and the exit code; common.py the shared helpers (constants, `CTL`, `Ctx`, running a
command with its log); readback.py reading a run back (tail, status, log, probe notes, their rows);
part_launch.py the setup and part 1; part_1b.py parts 2 and 3 on the 1.1B model; report.py part 4.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu import report as rep
from bench.gpu.common import (
    CTL,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_USAGE,
    GIB,
    HERE,
    PART_MIN_S,
    PARTS,
    PROBE_DIR,
    ROOT,
    WARMUP_STEPS,
    Ctx,
    Refused,
    json_out,
    nvidia_smi,
    say,
)
from bench.gpu.part_1b import part_oom, part_throughput
from bench.gpu.part_launch import box_env, gpu_facts, part_launch, setup, write_run_toml
from bench.gpu.readback import gpu_rows, median_rate, parse_resolved, resolved_rows, step_rates

# The entry point, and the names tests/bench/test_gpu_check.py reads as check.NAME from the parts' modules.
__all__ = ["main", "parse_args", "build_parser", "parse_parts", "run_part", "meta", "PART_FUNCS", "CTL", "PARTS",
           "PROBE_DIR", "EXIT_FAILED", "EXIT_USAGE", "EXIT_REFUSED", "Ctx", "json_out", "parse_resolved", "step_rates",
           "median_rate", "gpu_rows", "resolved_rows"]


def parse_parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("no part named")
    bad = [n for n in names if n not in PARTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown part {', '.join(bad)} (parts: {', '.join(PARTS)})")
    return [p for p in PARTS if p in names]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench/gpu_check.sh", description="trainctl's GPU check (issue 16); "
                                 "see bench/gpu/check.py for what it does.")
    ap.add_argument("--out", type=Path, default=Path("bench-out/gpu-check"),
                    help="folder for gpu-check.json, gpu-check.md and logs/ (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for models, data, runs (default: <out>-work, next to --out)")
    ap.add_argument("--wheels", type=Path, default=HERE / "wheels", help="wheel folder (make gpu-wheels)")
    ap.add_argument("--parts", type=parse_parts, default=list(PARTS), help=f"comma list of {', '.join(PARTS)}")
    ap.add_argument("--batch", type=int, default=8, help="per-device batch of the throughput part (default 8)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of the throughput part (default 20)")
    ap.add_argument("--seq", type=int, default=1024, help="sequence length of the throughput part (default 1024)")
    ap.add_argument("--oom-batch", type=int, default=1024, help="the oversized batch (default 1024)")
    ap.add_argument("--model-size", choices=("1b", "tiny"), default="1b",
                    help="model of the throughput and oom parts: 1b (default) or tiny (a quick smoke of the same steps)")
    ap.add_argument("--tiny-steps", type=int, default=30, help="steps of the launch part's tiny run (default 30)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time budget in seconds (default 420)")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.batch < 1 or a.oom_batch < 1 or a.seq < 16:
        ap.error("--batch and --oom-batch must be >= 1, --seq >= 16")
    if a.steps < WARMUP_STEPS + 2:
        ap.error(f"--steps must be at least {WARMUP_STEPS + 2} (the first {WARMUP_STEPS} are warm-up)")
    if a.oom_batch <= a.batch:
        ap.error("--oom-batch must be larger than --batch")
    if a.tiny_steps < 2:
        ap.error("--tiny-steps must be at least 2")
    if a.budget_s <= 0:
        ap.error("--budget-s must be positive")
    a.out = a.out.expanduser().resolve()
    if a.work is None:
        a.work = a.out.with_name(a.out.name + "-work")
        if not os.access(_existing_parent(a.work), os.W_OK):
            a.work = Path(tempfile.gettempdir()) / "trainctl-gpu-check-work"
    a.work = a.work.expanduser().resolve()
    if a.work == a.out:
        ap.error("--work must differ from --out (it holds GBs of models)")
    a.wheels = a.wheels.expanduser().resolve()
    return a


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


PART_FUNCS = {"launch": part_launch, "throughput": part_throughput, "oom": part_oom}


def git_sha() -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def meta(ctx: Ctx) -> dict:
    f, v = ctx.facts, ctx.shared.get("versions", {})
    gpu = f.get("name")
    if gpu and f.get("total_bytes"):
        gpu = f"{gpu} ({f['total_bytes'] / GIB:.0f} GiB, sm {f.get('capability')})"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu,
            "driver": (ctx.smi[0].get("driver") if ctx.smi else None), "torch": f.get("torch"),
            "cuda": f.get("torch_cuda"), "transformers": v.get("transformers"), "peft": v.get("peft"),
            "bitsandbytes": v.get("bitsandbytes"), "python": f.get("python"), "trainctl_entry": " ".join(CTL[1:]),
            "git_sha": git_sha(), "elapsed_s": round(time.monotonic() - ctx.t0), "notes": ctx.notes}


def run_part(ctx: Ctx, name: str, func) -> dict:
    if ctx.left() < PART_MIN_S.get(name, 0):
        say(f"{name}: skipped, {ctx.left():.0f}s of the time budget left")
        return {"status": "skipped", "seconds": 0, "error": f"time budget: {max(0, ctx.left()):.0f}s left", "rows": []}
    say(f"{name}: running ({ctx.left():.0f}s of the budget left)")
    t = time.monotonic()
    rows, error = [], None
    try:
        rows = func(ctx)
    except Exception as exc:  # a broken part is reported; the others still run
        error = f"{type(exc).__name__}: {exc}"[:500]
    part = {"status": rep.part_status(rows, error), "seconds": round(time.monotonic() - t, 1), "error": error,
            "rows": rows}
    say(f"{name}: {part['status']} in {part['seconds']:.0f}s" + (f" ({error})" if error else ""))
    return part


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        facts = gpu_facts()
    except Refused as exc:
        print(f"gpu-check: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    args.work.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    ctx = Ctx(args=args, env=box_env(args.work, args.work / "site"), facts=facts, smi=nvidia_smi())
    say(f"{facts.get('name')}, torch {facts.get('torch')} (CUDA {facts.get('torch_cuda')}), ctl = {' '.join(CTL[1:])}; "
        f"out {args.out}, work {args.work}")
    parts = {"setup": run_part(ctx, "setup", setup)}
    if parts["setup"]["status"] == "passed":
        write_run_toml(ctx)
        for name in args.parts:
            parts[name] = run_part(ctx, name, PART_FUNCS[name])
    result = {"meta": meta(ctx), "parts": parts, "args": {k: str(v) for k, v in vars(args).items()}}
    jpath, mpath = rep.write_report(result, args.out)
    print(mpath.read_text())
    say(f"{rep.overall(result)}: {jpath} and {mpath}")
    return 0 if rep.overall(result) == "passed" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
