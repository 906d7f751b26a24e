"""`make bench`: run every part's benchmark and print one table.

Each row is a figure, its baseline measured in the same run, the ratio and the target. Quick mode
by default (< 5 min on 2 cores); `--full` for the large sizes; `--only agent,ops` to pick parts;
`--json FILE` to keep the rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback

PARTS = ("agent", "cadence", "sampling", "ops", "train", "controller")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def run_parts(parts, quick: bool) -> tuple[list[dict], list[str]]:
    """Run each part's benchmark; a part that fails is reported, the others still run."""
    rows, failures = [], []
    for part in parts:
        try:
            mod = importlib.import_module(f"bench.bench_{part}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.bench_{part}":
                failures.append(f"{part}: no benchmark module")
                continue
            raise
        t0 = time.monotonic()
        try:
            for row in mod.run(quick=quick):
                rows.append({"part": part, **row})
        except Exception:
            failures.append(f"{part}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")
        print(f"[bench] {part} done in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return rows, failures


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trainctl benchmarks")
    for col in ("part", "figure", "value", "unit", "baseline", "ratio", "target"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["part"], r["name"], _fmt(r.get("value")), r.get("unit", ""), _fmt(r.get("baseline")),
                      _fmt(r.get("ratio")), r.get("target", ""))
    Console(width=160).print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make bench", description=__doc__)
    ap.add_argument("--full", action="store_true", help="large sizes (slow)")
    ap.add_argument("--only", default="", help="comma-separated parts: " + ",".join(PARTS))
    ap.add_argument("--json", dest="json_out", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    parts = [p for p in args.only.split(",") if p] or list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    rows, failures = run_parts(parts, quick=not args.full)
    print_table(rows)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(rows, fh, indent=2)
    for f in failures:
        print(f"benchmark failed: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
