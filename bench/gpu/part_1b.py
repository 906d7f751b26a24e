"""The GPU check's parts 2 and 3, throughput and oom, on the 1.1B model (bench/gpu/check.py).

Both use the same random-initialised ~1.1B Mistral-architecture model, synthetic notes prepared
at --seq and train.toml (`ensure_1b`, built once). Throughput: median tokens/s and torch's peak
memory of the trainctl run next to `ctl train estimate` and the plain HF baseline
(bench/gpu/hf_baseline.py), and the checkpoint's 8-bit optimizer state. Oom: `ctl launch` refuses
the oversized batch from the estimate; launched anyway it fails with cause `cuda_oom` and the
remediation that lowers per_device_batch_size.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bench.gpu import report as rep
from bench.gpu.common import CTL, GIB, MIB, Ctx, ctl, json_out, last_line, launch, must, read_json, sh
from bench.gpu.part_launch import ensure_tiny
from bench.gpu.readback import (
    follow,
    median_rate,
    probe_notes,
    resolved_rows,
    run_log,
    status,
    step_rates,
    trainer_note,
)


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
