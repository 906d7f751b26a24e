"""The GPU check's shared helpers (bench/gpu/check.py is the entry point and says what is checked).

What every part uses: the constants (parts, budgets, exit codes), `CTL` (how trainctl's CLI is
started), `Ctx` (the arguments, environment, GPU facts and what one part leaves for another),
running a command with its log under --out/logs/ (`sh`, `ctl`, `launch`, `must`), reading what it
printed (`last_line`, `json_out`, `read_json`), and the GPU as nvidia-smi reports it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROBE_DIR = HERE / "probe"
PARTS = ("launch", "throughput", "oom")
# The least time (s) a part needs on an H200; a part starts only with this much budget left.
PART_MIN_S = {"launch": 60, "throughput": 150, "oom": 60}
EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3
GIB, MIB = 1024**3, 1024**2
WARMUP_STEPS = 2  # left out of the median tokens/s, as in bench/gpu/hf_baseline.py


def _ctl_entry() -> list[str]:
    """`python -m trainctl` once trainctl/ is a package with a __main__, `python -m controller` until then."""
    try:
        found = importlib.util.find_spec("trainctl") is not None and importlib.util.find_spec("trainctl.__main__")
    except (ImportError, ValueError):
        found = None
    return [sys.executable, "-m", "trainctl" if found else "controller"]


CTL = _ctl_entry()  # the one place that says how trainctl's CLI is started


class Refused(Exception):
    """This machine cannot run the check; the message is the one line printed."""


@dataclass
class Ctx:
    args: argparse.Namespace
    env: dict
    facts: dict
    t0: float = field(default_factory=time.monotonic)
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    smi: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # what one part leaves for another (the tiny model, the 1B run)
    n: int = 0

    @property
    def work(self) -> Path:
        return self.args.work

    @property
    def store(self) -> Path:
        return self.args.work / "runs"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def run_id(self, name: str) -> str:
        return f"gpucheck-{name}-{self.stamp}"


def say(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def sh(ctx: Ctx, name: str, argv: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in the repo root, its output kept in <out>/logs/NN-name.log; never raises on exit codes."""
    ctx.n += 1
    log = ctx.args.out / "logs" / f"{ctx.n:02d}-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    timeout = max(5.0, min(timeout, ctx.left() + 30))
    t = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env or ctx.env, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, _text(exc.stdout), _text(exc.stderr) + f"\n[gpu-check] timed out after {timeout:.0f}s"
    log.write_text(f"$ {shlex.join(argv)}\n[exit {rc} after {time.monotonic() - t:.1f}s]\n--- stdout\n{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(argv, rc, out, err)


def _text(b) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")


def ctl(ctx: Ctx, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return sh(ctx, name, [*CTL, *args], timeout)


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (p.stderr + "\n" + p.stdout).splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith(("Error", "error", "Traceback")) or "Error:" in ln]
    return (errs[-1] if errs else (lines[-1] if lines else f"exit {p.returncode}")).strip()[:300]


def json_out(p: subprocess.CompletedProcess):
    """The last JSON document a command printed (they print one on their last line or as a block)."""
    text = p.stdout.strip()
    for start in [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")][::-1]:
        try:
            return json.loads(text[start:])
        except ValueError:
            continue
    return None


def must(p: subprocess.CompletedProcess, what: str):
    if p.returncode != 0:
        raise RuntimeError(f"{what} exited {p.returncode}: {last_line(p)}")
    return p


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def launch(ctx: Ctx, run_id: str, trainer_config: Path | None, train_sets: list[str], name: str,
           command: list[str] | None = None) -> subprocess.CompletedProcess:
    args = ["launch", "--local", "--config", str(ctx.work / "run.toml"), "--run-id", run_id]
    if trainer_config is not None:
        args += ["--trainer-config", str(trainer_config)]
    for s in train_sets:
        args += ["--train-set", s]
    if command:
        args += ["--", *command]
    return ctl(ctx, name, *args, timeout=240)


def nvidia_smi() -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.used,driver_version",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 5:
            gpus.append({"index": parts[0], "name": parts[1], "mem_total_mib": _num(parts[2]),
                         "mem_used_mib": _num(parts[3]), "driver": parts[4]})
    return gpus


def _num(s):
    try:
        return int(s)
    except (TypeError, ValueError):
        try:
            return float(s)
        except (TypeError, ValueError):
            return None
