"""The GPU check's reading of a run back (part of bench/gpu/check.py; used by parts 1-3).

Following a run with `ctl tail` while sampling its heartbeat.json (and stopping it when it outlives
its time), its status and log, the trainer's "resolved config" block and step lines (tokens/s),
the probe's notes (bench/gpu/probe/sitecustomize.py: what `auto` became), and the report rows that
compare the heartbeat's GPU figures with nvidia-smi and the resolved `auto` settings with this GPU.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import time

from bench.gpu import report as rep
from bench.gpu.common import CTL, ROOT, WARMUP_STEPS, Ctx, ctl, json_out, read_json


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
