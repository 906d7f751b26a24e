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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu import report as rep

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


# --- arguments ---------------------------------------------------------------------------------------

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


# --- running things ----------------------------------------------------------------------------------

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


# --- reading a run back ------------------------------------------------------------------------------

def parse_resolved(log: str) -> dict:
    """compute_dtype / optim / attn_implementation from the 'resolved config' block a trainctl run logs."""
    want = {"compute_dtype": "quant", "optim": "train", "attn_implementation": "model"}
    found, section = {}, None
    start = log.find("resolved config")
    for line in log[start:].splitlines() if start >= 0 else []:
        m = re.match(r"\s*\[([\w.]+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r'\s*(\w+)\s*=\s*"?([^"#]*?)"?\s*(#.*)?$', line)
        if m and want.get(m.group(1)) == section and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
        if len(found) == len(want) or line.startswith("step "):
            break
    return found


STEP_RE = re.compile(r"^step (\d+)/(\d+) .*?loss (\S+) .*?tokens/s (\d+(?:\.\d+)?)\s*$", re.M)


def step_rates(log: str) -> list[tuple[int, float]]:
    """(step, tokens/s) from trainctl's step lines, one per logged step (the last if a step repeats)."""
    rates = {int(m.group(1)): float(m.group(4)) for m in STEP_RE.finditer(log)}
    return sorted(rates.items())


def median_rate(rates: list[tuple[int, float]], warmup: int = WARMUP_STEPS) -> float | None:
    vals = [r for step, r in rates if step > warmup]
    return statistics.median(vals) if vals else None


def probe_notes(ctx: Ctx, run_id: str) -> list[dict]:
    notes = []
    for p in sorted((ctx.work / "probe").glob("*.json")):
        try:
            note = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if note.get("run_id") == run_id:
            notes.append(note)
    return notes


def trainer_note(notes: list[dict]) -> dict:
    with_model = [n for n in notes if n.get("models")]
    return with_model[-1] if with_model else (notes[-1] if notes else {})


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def follow(ctx: Ctx, run_id: str, timeout: float) -> dict:
    """`ctl tail` the run to its end while sampling heartbeat.json; stops the run if it outlives `timeout`."""
    ctx.n += 1
    log = ctx.args.out / "logs" / f"{ctx.n:02d}-tail-{run_id}.log"
    timeout = max(10.0, min(timeout, ctx.left() + 30))
    hb_path = ctx.store / run_id / "heartbeat.json"
    samples, seen = [], set()
    t = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen([*CTL, "tail", run_id, "--poll-s", "1", "--lines", "200"], cwd=ROOT, env=ctx.env,
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while proc.poll() is None and time.monotonic() - t < timeout:
            hb = read_json(hb_path)
            if hb and hb.get("seq") not in seen:
                seen.add(hb.get("seq"))
                samples.append({"seq": hb.get("seq"), "phase": hb.get("phase"), "gpus": hb.get("gpus") or [],
                                "trainer_alive": hb.get("trainer_alive")})
            time.sleep(0.5)
        timed_out = proc.poll() is None
        if timed_out:
            proc.kill()
            proc.wait()
    hb = read_json(hb_path)
    if hb and hb.get("seq") not in seen:
        samples.append({"seq": hb.get("seq"), "phase": hb.get("phase"), "gpus": hb.get("gpus") or [],
                        "trainer_alive": hb.get("trainer_alive")})
    if timed_out:
        ctl(ctx, f"stop-{run_id}", "stop", run_id, "--wait", timeout=90)
        stop_leftovers(hb)
    return {"tail_rc": None if timed_out else proc.returncode, "timed_out": timed_out, "samples": samples,
            "seconds": round(time.monotonic() - t, 1)}


def stop_leftovers(hb: dict | None) -> None:
    """After a graceful stop that did not take: end this run's trainer and agent by their recorded pids."""
    import signal

    for key in ("trainer_pid", "agent_pid"):
        pid = (hb or {}).get(key)
        if isinstance(pid, int) and pid > 1:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def status(ctx: Ctx, run_id: str) -> dict:
    p = ctl(ctx, f"status-{run_id}", "status", run_id, "--json", "--no-instance", timeout=60)
    return json_out(p) or {}


def run_log(ctx: Ctx, run_id: str) -> str:
    return ctl(ctx, f"log-{run_id}", "tail", run_id, "--from-start", "--no-follow", timeout=60).stdout


def gpu_rows(samples: list[dict], smi: list[dict]) -> list[dict]:
    """The heartbeat's GPU figures against the nvidia-smi this check ran itself."""
    gpus = [g for s in samples for g in s["gpus"] if isinstance(g, dict) and "error" not in g]
    ref = smi[0] if smi else {}
    rows = [rep.row("heartbeats with GPU figures", sum(1 for s in samples if s["gpus"]), reference=len(samples),
                    ok=bool(gpus), note="heartbeat.json samples taken while the run went")]
    if not gpus:
        errs = [g.get("error") for s in samples for g in s["gpus"] if isinstance(g, dict) and g.get("error")]
        if errs:
            rows.append(rep.row("heartbeat GPU error", errs[-1], ok=False))
        return rows
    first = gpus[0]
    rows.append(rep.row("GPU name", first.get("name"), reference=ref.get("name"), ok=first.get("name") == ref.get("name")))
    rows.append(rep.row("GPU memory total", first.get("mem_total_mib"), unit="MiB", reference=ref.get("mem_total_mib"),
                        ok=first.get("mem_total_mib") == ref.get("mem_total_mib")))
    used = [g.get("mem_used_mib") for g in gpus if isinstance(g.get("mem_used_mib"), int | float)]
    util = [g.get("util_percent") for g in gpus if isinstance(g.get("util_percent"), int | float)]
    rows.append(rep.row("GPU memory used, max over heartbeats", max(used) if used else None, unit="MiB",
                        ok=bool(used) and max(used) > 0))
    rows.append(rep.row("GPU utilisation, max over heartbeats", max(util) if util else None, unit="%", ok=bool(util)))
    return rows


def resolved_rows(ctx: Ctx, note: dict, log: str) -> list[dict]:
    """What `auto` became in the trainer (the probe), against what this GPU should give."""
    model = (note.get("models") or [{}])[0]
    want_dtype = "bfloat16" if ctx.facts.get("bf16") else "float16"
    want_attn = "flash_attention_2" if ctx.facts.get("flash_attn") else "sdpa"
    optims = note.get("optimizers") or []
    logged = parse_resolved(log)
    return [
        rep.row("compute_dtype = auto resolved to", model.get("bnb_4bit_compute_dtype"), reference=want_dtype,
                ok=model.get("bnb_4bit_compute_dtype") == want_dtype, note="bnb_4bit_compute_dtype of the loaded model"),
        rep.row("optim = auto resolved to", optims[-1].rsplit(".", 1)[-1] if optims else None,
                reference="PagedAdamW8bit", ok=any(o.endswith("PagedAdamW8bit") for o in optims),
                note=", ".join(optims)),
        rep.row("attn_implementation = auto resolved to", model.get("attn_implementation"), reference=want_attn,
                ok=model.get("attn_implementation") == want_attn,
                note="flash-attn installed" if ctx.facts.get("flash_attn") else "flash-attn not installed"),
        rep.row("the run's logged resolved config", ", ".join(f"{k}={v}" for k, v in logged.items()) or None,
                note="trainctl logs the config as written, so auto stays auto there; the probe shows what it became"),
    ]


# --- the parts ---------------------------------------------------------------------------------------

def write_run_toml(ctx: Ctx) -> Path:
    """The launches' run.toml: fast heartbeats, and the env the agent and trainer need on this box."""
    # Spelled out because under systemd (a box where it runs) the agent gets this file, not our environment.
    env = {k: ctx.env[k] for k in ("PYTHONPATH", "TRAINCTL_GPU_PROBE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                   "TRANSFORMERS_OFFLINE", "BNB_CUDA_VERSION", "TOKENIZERS_PARALLELISM", "PATH",
                                   "LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_VISIBLE_DEVICES", "HF_HOME") if ctx.env.get(k)}
    path = ctx.work / "run.toml"
    lines = ['name = "gpucheck"', "", "[agent]", "heartbeat_s = 2.0", "log_flush_s = 1.0", "stop_poll_s = 1.0", "",
             "[trainer.env]"] + [f"{k} = {json.dumps(v)}" for k, v in env.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def ensure_tiny(ctx: Ctx) -> Path:
    model = ctx.work / "tiny-model"
    if not (model / "config.json").is_file():
        must(ctl(ctx, "make-tiny-model", "train", "make-tiny-model", str(model), timeout=180), "ctl train make-tiny-model")
    return model


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


def part_launch(ctx: Ctx) -> list[dict]:
    model = ensure_tiny(ctx)
    data = ctx.work / "tiny-prepared"
    must(ctl(ctx, "prepare-tiny", "train", "prepare", "--config", "train/examples/demo-data.toml",
             "--set", f"tokenizer.path={json.dumps(str(model))}", "--set", f"output_dir={json.dumps(str(data))}",
             timeout=180), "ctl train prepare (bundled notes)")
    run_id = ctx.run_id("tiny")
    steps = ctx.args.tiny_steps
    sets = [f"model.path={json.dumps(str(model))}", f"data.path={json.dumps(str(data))}", f"train.max_steps={steps}",
            f"train.save_steps={max(1, steps // 2)}", 'quant.compute_dtype="auto"', 'train.optim="auto"',
            'model.attn_implementation="auto"']
    p = launch(ctx, run_id, ROOT / "train/examples/demo-train.toml", sets, "launch-tiny")
    rows = [rep.row("ctl launch --local", p.returncode, reference=0, ok=p.returncode == 0,
                    note="" if p.returncode == 0 else last_line(p))]
    if p.returncode != 0:
        return rows
    f = follow(ctx, run_id, timeout=240)
    st = status(ctx, run_id)
    log = run_log(ctx, run_id)
    done = st.get("complete") or {}
    rows.append(rep.row("ctl tail exit (0 = completed)", f["tail_rc"], reference=0, ok=f["tail_rc"] == 0,
                        note=f"timed out after {f['seconds']}s" if f["timed_out"] else f"{f['seconds']}s"))
    rows.append(rep.row("outcome", st.get("outcome"), reference="completed", ok=st.get("outcome") == "completed",
                        note=(st.get("error") or {}).get("summary", "")[:200]))
    rows.append(rep.row("steps", st.get("step"), reference=steps, ok=st.get("step") == steps))
    arts = {a.get("name") for a in done.get("artifacts", [])}
    rows.append(rep.row("adapter artifact in _complete", "adapter" in arts, reference=True, ok="adapter" in arts))
    rows += resolved_rows(ctx, trainer_note(probe_notes(ctx, run_id)), log)
    rows += gpu_rows(f["samples"], ctx.smi)
    return rows


def write_tomls_1b(ctx: Ctx, model: Path, data_src: Path, data: Path) -> tuple[Path, Path]:
    a = ctx.args
    dtoml = ctx.work / "data-1b.toml"
    dtoml.write_text(f"""output_dir = {json.dumps(str(data))}

[tokenizer]
path = {json.dumps(str(model))}
max_seq_length = {a.seq}

[split]
val_fraction = 0.01
seed = 42

[prepare]
num_proc = 4

[[sources]]
name = "synthetic"
path = {json.dumps(str(data_src))}
include = ["**/*.jsonl"]
""")
    ttoml = ctx.work / "train-1b.toml"
    ttoml.write_text(f"""# The GPU check's throughput run: train/examples/train.toml's QLoRA settings on a random 1.1B model.
[model]
path = {json.dumps(str(model))}
attn_implementation = "auto"

[quant]
load_in_4bit = true
quant_type = "nf4"
double_quant = true
compute_dtype = "auto"

[lora]
r = 16
alpha = 32
dropout = 0.05
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]

[data]
path = {json.dumps(str(data))}

[train]
per_device_batch_size = {a.batch}
grad_accum = 1
max_steps = {a.steps}
learning_rate = 2e-4
lr_scheduler = "cosine"
warmup_ratio = 0.03
optim = "auto"
gradient_checkpointing = true
logging_steps = 1
save_steps = {a.steps // 2}
save_total_limit = 1
max_eval_batches = 2
""")
    return dtoml, ttoml


def ensure_1b(ctx: Ctx) -> dict:
    """The 1.1B model, the synthetic notes prepared at --seq, and the train.toml (shared by throughput and oom)."""
    if "1b" in ctx.shared:
        return ctx.shared["1b"]
    tiny = ensure_tiny(ctx)
    model, src, data = ctx.work / "mistral-1b", ctx.work / "notes-1b", ctx.work / "prepared-1b"
    built = json_out(must(sh(ctx, "build-1b", [sys.executable, "-m", "bench.gpu.build", "model", str(model),
                                               "--tokenizer-from", str(tiny), "--size", ctx.args.model_size],
                                  timeout=300), f"building the {ctx.args.model_size} model"))
    # ~0.6 blocks of 1024 tokens per note with the tiny tokenizer: enough blocks for the oversized batch.
    records = int(max(ctx.args.oom_batch, 200) * 1.9)
    must(sh(ctx, "notes-1b", [sys.executable, "-m", "bench.gpu.build", "data", str(src), "--records", str(records)],
            timeout=120), "writing the synthetic notes")
    dtoml, ttoml = write_tomls_1b(ctx, model, src, data)
    must(ctl(ctx, "prepare-1b", "train", "prepare", "--config", str(dtoml), timeout=300), "ctl train prepare (1.1B)")
    prepared = read_json(data / "report.json") or {}
    ctx.shared["1b"] = {"model": model, "data": data, "train_toml": ttoml, "built": built or {},
                        "blocks": (prepared.get("train") or {}).get("blocks")}
    return ctx.shared["1b"]


def gpu_mem_arg(ctx: Ctx) -> str:
    if ctx.smi and isinstance(ctx.smi[0].get("mem_total_mib"), int):
        return f"{ctx.smi[0]['mem_total_mib']}MiB"
    return f"{int(ctx.facts.get('total_bytes', 0) // MIB)}MiB"


def part_throughput(ctx: Ctx) -> list[dict]:
    a = ctx.args
    one = ensure_1b(ctx)
    built = one["built"]
    rows = [rep.row("model parameters", built.get("params"), note=f"random init, {built.get('dtype')}, "
                    f"{built.get('num_hidden_layers')} layers x {built.get('hidden_size')}, built in {built.get('seconds')}s"),
            rep.row("train blocks", one["blocks"], unit=f"x {a.seq} tokens", note="synthetic notes, tiny tokenizer")]
    est_p = ctl(ctx, "estimate-1b", "train", "estimate", "--config", str(one["train_toml"]), "--gpu-mem",
                gpu_mem_arg(ctx), "--json", timeout=120)
    est = json_out(est_p) or {}
    total = est.get("total")
    rows.append(rep.row("ctl train estimate", total / GIB if total else None, unit="GiB",
                        reference=(est.get("budget") or 0) / GIB or None, ok=bool(est.get("fits")) if est else False,
                        note="fits" if est.get("fits") else last_line(est_p)))
    run_id = ctx.run_id("1b")
    p = launch(ctx, run_id, one["train_toml"], [], "launch-1b")
    rows.append(rep.row("ctl launch --local", p.returncode, reference=0, ok=p.returncode == 0,
                        note="" if p.returncode == 0 else last_line(p)))
    if p.returncode != 0:
        return rows
    f = follow(ctx, run_id, timeout=420)
    st = status(ctx, run_id)
    log = run_log(ctx, run_id)
    rows.append(rep.row("outcome", st.get("outcome"), reference="completed", ok=st.get("outcome") == "completed",
                        note=(st.get("error") or {}).get("cause", "") or f"{f['seconds']}s"))
    ctx.shared["1b_completed"] = st.get("outcome") == "completed"
    rates = step_rates(log)
    tps = median_rate(rates)
    note = trainer_note(probe_notes(ctx, run_id))
    cuda = note.get("cuda") or {}
    model_note = (note.get("models") or [{}])[0]
    base, base_p = None, None
    if ctx.left() > 45:
        base_p = sh(ctx, "hf-baseline", [sys.executable, "-m", "bench.gpu.hf_baseline", "--model", str(one["model"]),
                                         "--data", str(one["data"] / "train"), "--batch", str(a.batch), "--steps",
                                         str(a.steps), "--attn", model_note.get("attn_implementation") or "sdpa",
                                         "--dtype", model_note.get("bnb_4bit_compute_dtype") or "bfloat16",
                                         "--workdir", str(ctx.work / "hf-baseline")], timeout=420)
        base = json_out(base_p) if base_p.returncode == 0 else None
    base_tps = (base or {}).get("tokens_per_s")
    rows.append(rep.row("tokens/s, trainctl (median, steps > 2)", tps, reference=base_tps, ratio=rep.ratio(tps, base_tps),
                        note=f"HF Trainer + bitsandbytes + peft as reference; {len(rates)} steps logged"
                        + ("" if base or base_p is None else f"; baseline failed: {last_line(base_p)}")
                        + ("" if base_p is not None else "; baseline skipped: time budget")))
    peak, reserved = cuda.get("max_allocated_bytes"), cuda.get("max_reserved_bytes")
    rows.append(rep.row("torch peak allocated vs ctl train estimate", peak / GIB if peak else None, unit="GiB",
                        reference=total / GIB if total else None, ratio=rep.ratio(peak, total),
                        note="estimate includes 0.8 GiB CUDA context; ratio = measured / estimate"))
    rows.append(rep.row("torch peak reserved vs ctl train estimate", reserved / GIB if reserved else None, unit="GiB",
                        reference=total / GIB if total else None, ratio=rep.ratio(reserved, total)))
    bpeak = (base or {}).get("max_allocated_bytes")
    rows.append(rep.row("torch peak allocated, trainctl vs HF baseline", peak / GIB if peak else None, unit="GiB",
                        reference=bpeak / GIB if bpeak else None, ratio=rep.ratio(peak, bpeak)))
    used = [g.get("mem_used_mib") for s in f["samples"] for g in s["gpus"] if isinstance(g, dict)
            and isinstance(g.get("mem_used_mib"), int | float)]
    rows.append(rep.row("nvidia-smi memory used, max over heartbeats", max(used) if used else None, unit="MiB",
                        reference=round(total / MIB) if total else None, ratio=rep.ratio(max(used) if used else None,
                                                                                         total / MIB if total else None)))
    ckpts = sorted((ctx.store / run_id / "artifacts").glob("checkpoint-*/trainer_state.pt"))
    if ckpts:
        o = json_out(sh(ctx, "optim-state-1b", [sys.executable, "-m", "bench.gpu.build", "optim-state", str(ckpts[-1])],
                        timeout=120)) or {}
        s1 = (o.get("dtypes") or {}).get("state1", [])
        rows.append(rep.row("checkpoint optimizer state1 dtypes", s1 or o.get("keys"), reference=["uint8"],
                            ok="uint8" in s1, note="bitsandbytes 8-bit Adam keeps uint8 state1/state2 + qmap/absmax"))
    else:
        rows.append(rep.row("checkpoint optimizer state", None, ok=False, note="no checkpoint in the store"))
    rows += resolved_rows(ctx, note, log)[:2]
    return rows


def part_oom(ctx: Ctx) -> list[dict]:
    a = ctx.args
    one = ensure_1b(ctx)
    big = a.oom_batch
    rows = []
    if one["blocks"] is not None and one["blocks"] < big:
        ctx.notes.append(f"oom: only {one['blocks']} blocks, so the oversized batch holds {one['blocks']} rows")
    refused_id = ctx.run_id("oomcheck")
    p = launch(ctx, refused_id, one["train_toml"], [f"train.per_device_batch_size={big}", "train.max_steps=2"],
               "launch-oom-refused")
    text = p.stdout + p.stderr
    refused = p.returncode != 0 and "does not fit" in text
    line = next((ln.strip() for ln in text.splitlines() if "does not fit" in ln), last_line(p))
    rows.append(rep.row(f"ctl launch refuses per_device_batch_size={big}", "refused" if refused else f"exit {p.returncode}",
                        reference="refused", ok=refused, note=line[:240]))
    if p.returncode == 0:  # the estimate let it through: this run is the OOM run
        run_id = refused_id
    else:
        run_id = ctx.run_id("oom")
        command = [*CTL, "train", "sft", "--config", str(one["train_toml"]), "--set",
                   f"train.per_device_batch_size={big}", "--set", "train.max_steps=2"]
        p = launch(ctx, run_id, None, [], "launch-oom", command=command)
        rows.append(rep.row("ctl launch with an explicit trainer command (no memory check)", p.returncode, reference=0,
                            ok=p.returncode == 0, note="" if p.returncode == 0 else last_line(p)))
        if p.returncode != 0:
            return rows
    f = follow(ctx, run_id, timeout=300)
    st = status(ctx, run_id)
    err = st.get("error") or {}
    rows.append(rep.row("ctl tail exit (1 = failed)", f["tail_rc"], reference=1, ok=f["tail_rc"] == 1,
                        note=f"timed out after {f['seconds']}s" if f["timed_out"] else f"{f['seconds']}s"))
    rows.append(rep.row("_error cause", err.get("cause"), reference="cuda_oom", ok=err.get("cause") == "cuda_oom",
                        note=(err.get("summary") or "")[:200]))
    remedy = err.get("remediation") or ""
    rows.append(rep.row("_error remediation names the fix", "per_device_batch_size" in remedy, reference=True,
                        ok="per_device_batch_size" in remedy, note=remedy[:240]))
    tail = "\n".join(err.get("log_tail") or []) or run_log(ctx, run_id)
    hit = next((ln.strip() for ln in tail.splitlines() if re.search(r"out of memory|OutOfMemoryError", ln, re.I)), None)
    rows.append(rep.row("a real CUDA OOM traceback in the log", bool(hit), reference=True, ok=bool(hit),
                        note=(hit or "")[:240]))
    if "1b_completed" in ctx.shared:
        rows.append(rep.row(f"the fix: per_device_batch_size={a.batch} (part throughput)",
                            "completed" if ctx.shared["1b_completed"] else "failed", reference="completed",
                            ok=ctx.shared["1b_completed"]))
    return rows


PART_FUNCS = {"launch": part_launch, "throughput": part_throughput, "oom": part_oom}


# --- setup and main ----------------------------------------------------------------------------------

def gpu_facts(python: str = sys.executable) -> dict:
    """torch's view of the GPU, from a subprocess (this process never touches CUDA); raises Refused."""
    try:
        p = subprocess.run([python, "-m", "bench.gpu.build", "facts"], cwd=ROOT, capture_output=True, text=True,
                           timeout=180, env={**os.environ, "PYTHONPATH": _pythonpath([ROOT])})
    except (OSError, subprocess.SubprocessError) as exc:
        raise Refused(f"could not ask {python} about its GPU: {exc}") from None
    facts = json_out(p) if p.returncode == 0 else None
    if facts is None:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise Refused(f"could not ask {python} about its GPU: {why[:200]}")
    if not facts.get("cuda"):
        smi = "nvidia-smi found" if shutil.which("nvidia-smi") else "no nvidia-smi"
        raise Refused(f"no CUDA GPU here: {facts.get('why')}; {smi}. Nothing was run and no results were written.")
    return facts


def _pythonpath(first) -> str:
    old = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(p) for p in first] + old)


def box_env(work: Path, site: Path) -> dict:
    """The environment of every command: offline, trainctl importable, unpacked wheels, the probe."""
    env = dict(os.environ)
    env.update(PYTHONPATH=_pythonpath([PROBE_DIR, ROOT, site]), TRAINCTL_HOME=str(work / "home"),
               TRAINCTL_STORE=str(work / "runs"), TRAINCTL_GPU_PROBE_DIR=str(work / "probe"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    for k in ("TRAINCTL_S3_ENDPOINT", "TRAINCTL_S3_REGION", "TRAINCTL_EC2_ENDPOINT", "SLACK_WEBHOOK_URL"):
        env.pop(k, None)
    return env


def setup(ctx: Ctx) -> list[dict]:
    """Unpack the wheels this machine lacks, then prove the import set and one NF4 round trip."""
    from bench.gpu import wheels

    site = ctx.work / "site"
    rows = []
    try:
        import lzma  # noqa: F401 - the trimmed wheels are LZMA-compressed zips
    except ImportError:
        raise RuntimeError(f"{sys.executable} has no lzma module, which the trimmed wheels need") from None
    try:
        plan = wheels.install(ctx.args.wheels, site)
    except ImportError as exc:
        raise RuntimeError(f"unpacking the wheels needs `packaging` on this python: {exc}") from None
    rows.append(rep.row("wheels unpacked", sorted(plan.install) or "none needed",
                        note=f"from {ctx.args.wheels}; already here: {len(plan.present)}"))
    for line in plan.unmet:
        ctx.notes.append(f"unmet: {line}")
    hard = [u for u in plan.unmet if re.match(r"trainctl needs (bitsandbytes|datasets|click|paramiko|watchdog)\b", u)
            or "does not fit this interpreter" in u]
    if hard:
        rows.append(rep.row("box dependencies", "missing", ok=False,
                            note="; ".join(hard)[:400] + f" (run `make gpu-wheels` and bring {ctx.args.wheels})"))
        return rows
    v = json_out(sh(ctx, "verify-box", [sys.executable, "-m", "bench.gpu.build", "verify"], timeout=240)) or {}
    if v.get("bnb_cuda_version"):
        ctx.env["BNB_CUDA_VERSION"] = v["bnb_cuda_version"]
        ctx.notes.append(f"BNB_CUDA_VERSION={v['bnb_cuda_version']} (bitsandbytes has no build for torch's CUDA "
                         f"{ctx.facts.get('torch_cuda')})")
    ctx.shared["versions"] = v.get("versions") or {}
    errs = dict(v.get("errors") or {})
    nf4_err = errs.pop("nf4_roundtrip", None)
    rows.append(rep.row("imports", "ok" if not errs else "; ".join(f"{k}: {e}" for k, e in errs.items())[:400],
                        ok=not errs and bool(v), note=", ".join(f"{k} {ver}" for k, ver in ctx.shared["versions"].items())))
    rows.append(rep.row("bitsandbytes NF4 round trip on the GPU", v.get("nf4_roundtrip_mean_abs_err"),
                        note=nf4_err or "mean abs error of quantize/dequantize",
                        ok=v.get("nf4_roundtrip_mean_abs_err") is not None))
    return rows


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
