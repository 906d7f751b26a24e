"""The GPU check's report: one JSON file with everything, one markdown table for humans.

A result is `{"meta": {...}, "parts": {name: part}}`; a part is `{"status", "seconds", "error",
"rows": [row, ...]}` with status passed | failed | error | skipped; a row is `{"item", "value",
"unit", "reference", "ratio", "ok", "note"}` where `ok` is True/False for a check and None for a
figure reported as is (a ratio printed next to its reference, no target).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

JSON_NAME = "gpu-check.json"
MD_NAME = "gpu-check.md"
STATUSES = ("passed", "failed", "error", "skipped")


def row(item: str, value=None, *, unit: str = "", reference=None, ratio=None, ok=None, note: str = "") -> dict:
    return {"item": item, "value": value, "unit": unit, "reference": reference, "ratio": ratio, "ok": ok, "note": note}


def ratio(a, b) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return a / b


def part_status(rows: list[dict], error: str | None = None) -> str:
    if error:
        return "error"
    return "failed" if any(r.get("ok") is False for r in rows) else "passed"


def overall(result: dict) -> str:
    """passed when every part that ran passed and at least one ran; else failed / not run."""
    statuses = [p.get("status") for p in result.get("parts", {}).values()]
    ran = [s for s in statuses if s != "skipped"]
    if not ran:
        return "not run"
    return "passed" if all(s == "passed" for s in ran) else "failed"


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        v = f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    elif isinstance(v, int) and abs(v) >= 10000:
        v = f"{v:,}"
    elif isinstance(v, list | dict):
        v = json.dumps(v, separators=(", ", ": "))
    text = str(v)
    return f"{text} {unit}".strip() if unit else text


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _ok(v) -> str:
    return {True: "ok", False: "FAIL", None: ""}[v]


def to_markdown(result: dict) -> str:
    meta = result.get("meta", {})
    lines = ["# trainctl GPU check", ""]
    verdict = overall(result)
    lines.append(f"**{verdict}**" + (f" on {meta['gpu']}" if meta.get("gpu") else "")
                 + (f", {meta['date']}" if meta.get("date") else ""))
    lines.append("")
    for key in ("gpu", "driver", "torch", "cuda", "transformers", "peft", "bitsandbytes", "python",
                "trainctl_entry", "git_sha", "elapsed_s", "wheels"):
        if meta.get(key) not in (None, ""):
            lines.append(f"- {key.replace('_', ' ')}: {_cell(fmt(meta[key]))}")
    for note in meta.get("notes", []):
        lines.append(f"- note: {_cell(note)}")
    lines += ["", "| part | item | value | reference | ratio | result | note |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, part in result.get("parts", {}).items():
        status = part.get("status", "?")
        secs = part.get("seconds")
        head = f"{status}" + (f" in {secs:.0f}s" if isinstance(secs, int | float) else "")
        lines.append(f"| **{_cell(name)}** | | | | | {_cell(head)} | {_cell(part.get('error') or '')} |")
        for r in part.get("rows", []):
            ref = r.get("reference")
            lines.append("| | " + " | ".join(_cell(c) for c in (
                r.get("item", ""), fmt(r.get("value"), r.get("unit", "")),
                fmt(ref, r.get("unit", "")) if isinstance(ref, int | float) and not isinstance(ref, bool) else fmt(ref),
                "-" if r.get("ratio") is None else f"{r['ratio']:.3g}", _ok(r.get("ok")), r.get("note", ""))) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> tuple[Path, Path]:
    """Write gpu-check.json and gpu-check.md into `out` (created); returns their paths."""
    for name, part in result.get("parts", {}).items():
        if part.get("status") not in STATUSES:
            raise ValueError(f"part {name}: status {part.get('status')!r} is not one of {', '.join(STATUSES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**result, "overall": overall(result)}
    jpath, mpath = out / JSON_NAME, out / MD_NAME
    for path, text in ((jpath, json.dumps(doc, indent=2, default=str) + "\n"), (mpath, to_markdown(result))):
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(text)
        tmp.replace(path)
    return jpath, mpath
