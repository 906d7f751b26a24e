"""The GPU check's setup and part 1, launch (bench/gpu/check.py lists the parts).

Setup: torch's view of the GPU (asked in a subprocess; `Refused` without a CUDA GPU), the
environment of every command (offline, trainctl importable, the unpacked wheels, the probe), the
wheels this machine lacks unpacked and the import set and one NF4 round trip proved, and the
launches' run.toml. Part 1: the tiny model and the bundled notes, a real 4-bit QLoRA run with
compute_dtype, optim and attn_implementation `auto` launched with `ctl launch --local` and
followed to `_complete`, what `auto` resolved to and the heartbeats' GPU figures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.gpu import report as rep
from bench.gpu.common import PROBE_DIR, ROOT, Ctx, Refused, ctl, json_out, last_line, launch, must, sh
from bench.gpu.readback import follow, gpu_rows, probe_notes, resolved_rows, run_log, status, trainer_note


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
