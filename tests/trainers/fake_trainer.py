"""A stand-in trainer that follows the agent-trainer contract and ends the way a test asks.

It prints deterministic lines (see `expected_lines`), writes progress JSON lines, optionally an
adapter, then exits 0 / N, kills itself with SIGKILL, or hangs (optionally ignoring SIGINT and
SIGTERM, like a trainer stuck in a CUDA call).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def expected_lines(n: int) -> list[bytes]:
    """The exact bytes of the lines the trainer prints with `--lines n` (mixed ASCII and UTF-8)."""
    return [f"line {i:06d} loss={1.0 / (i + 1):.6f} {'é✓' if i % 7 == 0 else 'x' * (i % 13)}\n".encode()
            for i in range(n)]


def _progress(rec: dict) -> None:
    with open(os.environ["TRAINCTL_PROGRESS_FILE"], "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def _checkpoint_and_exit(signum, _frame) -> None:
    """What our trainer does on a stop signal: a whole checkpoint folder (state file last), then exit."""
    name = "checkpoint-7"
    folder = os.path.join(os.environ["TRAINCTL_OUTPUT_DIR"], name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as fh:
        fh.write(b"\0" * 1024)
    with open(os.path.join(folder, "trainer_state.pt"), "wb") as fh:
        fh.write(b"state")
    _progress({"artifact": name, "path": f"{name}/", "final": False})
    print(f"received signal {signum}: saved {name}", file=sys.stderr, flush=True)
    os._exit(130)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between lines")
    ap.add_argument("--exit", type=int, default=0)
    ap.add_argument("--end", choices=["exit", "sigkill", "hang", "hang-stubborn"], default="exit")
    ap.add_argument("--adapter", choices=["none", "ok", "declare-missing", "dangling"], default="none")
    ap.add_argument("--adapter-bytes", type=int, default=4096)
    ap.add_argument("--tail", default="", help="text printed (to stderr) just before the end")
    ap.add_argument("--nan", action="store_true", help="report a NaN loss as the last step")
    ap.add_argument("--ready-file", default="", help="touched once all lines are printed")
    ap.add_argument("--leave-child", default="", help="start a long sleep in the background, pid to this file")
    ap.add_argument("--rotated-checkpoint", action="store_true",
                    help="declare a checkpoint, then delete it (save_total_limit rotation) before it can ship")
    ap.add_argument("--checkpoint-on-stop", action="store_true",
                    help="on SIGINT/SIGTERM save checkpoint-<step>/ (as our trainer does), declare it, exit 130")
    ap.add_argument("--batch", type=int, default=4, help="its micro-batch, unless TRAINCTL_MICRO_BATCH says otherwise")
    ap.add_argument("--oom-above", type=int, default=None,
                    help="after the lines, die of a CUDA OOM (torch's message) while the micro-batch is above this")
    ap.add_argument("--resume", action="store_true", help="a resume flag: it says it resumed")
    args = ap.parse_args()
    if args.oom_above is not None:
        batch = int(os.environ.get("TRAINCTL_MICRO_BATCH") or args.batch)
        print(f"micro-batch {batch} grad-accum {os.environ.get('TRAINCTL_GRAD_ACCUM', '-')} "
              f"resume {args.resume}", flush=True)
    if args.checkpoint_on_stop:
        signal.signal(signal.SIGINT, _checkpoint_and_exit)
        signal.signal(signal.SIGTERM, _checkpoint_and_exit)

    out = sys.stdout.buffer
    _progress({"phase": "training"})
    for i, line in enumerate(expected_lines(args.lines)):
        out.write(line)
        out.flush()
        if i % 5 == 0:
            _progress({"step": i + 1, "total_steps": args.lines, "epoch": i / args.lines,
                       "loss": 1.0 / (i + 1), "lr": 2e-4, "tokens_per_s": 1000.0})
        if args.interval:
            time.sleep(args.interval)
    if args.nan:
        _progress({"step": args.lines, "total_steps": args.lines, "loss": float("nan")})
    if args.oom_above is not None and batch > args.oom_above:
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
        return 1
    odir = os.environ["TRAINCTL_OUTPUT_DIR"]
    if args.rotated_checkpoint:
        _progress({"artifact": "checkpoint-1", "path": "checkpoint-1/", "final": False})  # already gone
    if args.adapter in ("ok", "dangling"):
        os.makedirs(f"{odir}/adapter", exist_ok=True)
        with open(f"{odir}/adapter/adapter_model.safetensors", "wb") as fh:
            fh.write(os.urandom(args.adapter_bytes))
        with open(f"{odir}/adapter/adapter_config.json", "w") as fh:
            json.dump({"r": 8, "lora_alpha": 16}, fh)
        if args.adapter == "dangling":
            os.symlink(f"{odir}/nowhere.bin", f"{odir}/adapter/tokenizer.model")
    if args.adapter != "none":
        _progress({"phase": "saving"})
        _progress({"artifact": "adapter", "path": "adapter/", "final": True})
    if args.tail:
        sys.stderr.write(args.tail if args.tail.endswith("\n") else args.tail + "\n")
        sys.stderr.flush()
    if args.leave_child:
        import subprocess

        child = subprocess.Popen(["sleep", "300"])
        with open(args.leave_child, "w") as fh:
            fh.write(str(child.pid))
    if args.ready_file:
        open(args.ready_file, "w").close()
    if args.end == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if args.end == "hang-stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.end in ("hang", "hang-stubborn"):
        while True:
            time.sleep(60)
    return args.exit


if __name__ == "__main__":
    sys.exit(main())
