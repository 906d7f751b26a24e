"""Agent benchmarks: overhead on the trainer, agent CPU and memory, log latency, S3 economy.

Every figure comes from a real `ctl agent run` subprocess shipping to moto's S3 server on
loopback; baselines are measured in the same run. Quick mode uses 20k-line floods and short
latency windows; `--full` uses the issue's 200k lines and longer windows.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.agent_harness import FLOOD, PACED, RUN, SETTLE_S, STEPPED, Moto, MotoProc, run_agent


def _baseline_flood(script: Path, n: int, tmp: Path) -> dict:
    out = tmp / "base.json"
    with open(tmp / "base.log", "wb") as log:
        subprocess.run([sys.executable, str(script), str(n), str(out), SETTLE_S], stdout=log, check=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})  # the environment the agent gives a trainer
    (tmp / "base.log").unlink()
    return json.loads(out.read_text())


def _overhead_and_cost(moto, tmp: Path, quick: bool) -> list[dict]:
    n = 50_000 if quick else 200_000
    script = tmp / "flood.py"
    script.write_text(FLOOD)
    base, under, runs = [], [], []
    for i in range(3):
        base.append(_baseline_flood(script, n, tmp))
        out = tmp / f"under{i}.json"
        run = run_agent(moto, tmp, [sys.executable, str(script), str(n), str(out), SETTLE_S])
        run["trainer"] = json.loads(out.read_text())
        under.append(run["trainer"])
        runs.append(run)
    idle_cpu = []
    for i in range(2 if quick else 3):
        idle_out = tmp / f"idle{i}.json"
        idle = run_agent(moto, tmp, [sys.executable, str(script), "0", str(idle_out), SETTLE_S])
        idle_cpu.append(idle["cpu_all"] - json.loads(idle_out.read_text())["cpu"])
    idle_agent_cpu = statistics.median(idle_cpu)
    b_wall, u_wall = statistics.median(x["wall"] for x in base), statistics.median(x["wall"] for x in under)
    agent_cpu = statistics.median(r["cpu_all"] - r["trainer"]["cpu"] for r in runs)
    trainer_cpu = statistics.median(x["cpu"] for x in under)
    hwm = max(r["hwm_mb"] for r in runs)
    return [
        {"name": f"trainer flood wall, {n:,} lines, under agent vs alone", "value": u_wall, "baseline": b_wall,
         "ratio": u_wall / b_wall, "target": "ratio <= 1.03", "unit": "s"},
        {"name": "agent CPU / trainer CPU (flood, incl. agent start-up)", "value": agent_cpu, "baseline": trainer_cpu,
         "ratio": agent_cpu / trainer_cpu, "target": "ratio <= 0.05", "unit": "cpu-s"},
        {"name": "agent CPU / trainer CPU (flood, start-up excluded)", "value": agent_cpu - idle_agent_cpu,
         "baseline": trainer_cpu, "ratio": (agent_cpu - idle_agent_cpu) / trainer_cpu, "target": "ratio <= 0.05",
         "unit": "cpu-s"},
        {"name": "agent CPU per MB of log shipped (start-up excluded)",
         "value": (agent_cpu - idle_agent_cpu) / (statistics.median(r["log_bytes"] for r in runs) / 2**20),
         "baseline": None, "ratio": None, "target": "info", "unit": "cpu-s/MB"},
        {"name": "agent start-up + finish CPU (silent trainer, same 1.5 s)", "value": idle_agent_cpu, "baseline": None,
         "ratio": None, "target": "info", "unit": "cpu-s"},
        {"name": "agent peak RSS", "value": hwm, "baseline": None, "ratio": None, "target": "<= 80", "unit": "MB"},
    ]


def _stepped_cost(moto, tmp: Path, quick: bool) -> list[dict]:
    """Agent CPU against a trainer that computes between its log lines (start-up included)."""
    steps = 300 if quick else 1200
    script = tmp / "stepped.py"
    script.write_text(STEPPED)

    out = tmp / "stepped.json"
    run = run_agent(moto, tmp, [sys.executable, str(script), str(steps), str(out)])
    trainer_cpu = json.loads(out.read_text())["cpu"]
    agent_cpu = run["cpu_all"] - trainer_cpu  # start-up included: conservative, and it shrinks as a run grows
    return [{"name": f"agent CPU / trainer CPU (stepped trainer: {steps} steps of 30 ms CPU, 5 lines each)",
             "value": agent_cpu, "baseline": trainer_cpu, "ratio": agent_cpu / trainer_cpu, "target": "ratio <= 0.05",
             "unit": "cpu-s"}]


def _latency(moto, tmp: Path, rate: float, duration: float) -> tuple[float, float, int]:
    script = tmp / "paced.py"
    script.write_text(PACED)
    lat: list[float] = []

    def reader(rs, _wd):
        def loop():
            cursor, deadline = None, time.time() + duration + 30
            while time.time() < deadline:
                got = rs.read_logs(RUN, cursor)
                now = time.time()
                if got.chunks:
                    cursor = got.cursor
                    for line in got.data.split(b"\n"):
                        if line:  # chunks end on line boundaries, so every line starts with its stamp
                            lat.append(now - float(line.split(b" ", 1)[0]))
                if rs.read_complete(RUN) and not got.chunks:
                    return
                time.sleep(0.05)

        threading.Thread(target=loop, daemon=True).start()

    run_agent(moto, tmp, [sys.executable, str(script), str(rate), str(duration)], on_start=reader)
    time.sleep(0.5)
    q = statistics.quantiles(lat, n=100)
    return q[49], q[94], len(lat)


def _economy(moto, tmp: Path, quick: bool) -> list[dict]:
    """Requests and bytes for a 10 lines/s trainer at the default intervals, time compressed k-fold:
    every interval and the line rate are scaled by k, so `sim_s` simulated seconds take sim_s/k."""
    k, sim_s = 20, (300 if quick else 3600)
    defaults = {"heartbeat-s": 30, "log-flush-s": 2, "latest-s": 10, "progress-s": 5, "stop-poll-s": 10}
    extra = [a for name, v in defaults.items() for a in (f"--{name}", str(v / k))]
    extra += ["--tick-s", str(2 / k / 4)]
    script = tmp / "paced.py"
    script.write_text(PACED)
    run = run_agent(moto, tmp, [sys.executable, str(script), str(10 * k), str(sim_s / k)], extra)
    st, per_hour = run["stats"], 3600 / sim_s
    puts = st["puts"] * per_hour
    reads = sum(n for op, n in st["requests"].items() if not op.startswith(("PutObject", "UploadPart"))) * per_hour
    chunk_bytes = st["bytes"].get("PutObject:chunk", 0)
    return [
        {"name": "PUT requests per simulated hour (10 lines/s, default intervals)", "value": puts,
         "baseline": 36000.0, "ratio": puts / 36000, "target": "far below one PUT per line (36,000/h)",
         "unit": "PUT/h"},
        {"name": "GET/HEAD/LIST requests per simulated hour (stop polls)", "value": reads, "baseline": None,
         "ratio": None, "target": "info", "unit": "req/h"},
        {"name": "log chunk bytes uploaded / log bytes", "value": float(chunk_bytes),
         "baseline": float(run["log_bytes"]), "ratio": chunk_bytes / run["log_bytes"], "target": "ratio <= 1.05",
         "unit": "B"},
        {"name": "all PUT bytes / log bytes (incl. latest-1000-lines file)", "value": float(st["put_bytes"]),
         "baseline": float(run["log_bytes"]), "ratio": st["put_bytes"] / run["log_bytes"], "target": "info",
         "unit": "B"},
    ]


def _outage(moto, tmp: Path, outage_s: float) -> list[dict]:
    """Stop S3 mid-run for `outage_s`; how long until the store has every line again, and is it exact."""
    script = tmp / "paced.py"
    script.write_text(PACED)
    marks: dict = {}

    def chaos(rs, wd):
        def go():
            deadline = time.time() + 30
            while time.time() < deadline and not list(rs.list_log_chunks(RUN)):
                time.sleep(0.1)
            moto.stop()
            time.sleep(outage_s)
            moto.start()
            marks["back"] = time.time()
            spooled = (wd / "trainer.log").stat().st_size  # everything written during the outage
            got, cursor = 0, None
            while time.time() < marks["back"] + 60 and got < spooled:
                part = rs.read_logs(RUN, cursor)
                got, cursor = got + len(part.data), part.cursor or cursor
                time.sleep(0.05)
            marks["caught_up"] = time.time()
            marks["backlog"] = spooled

        marks["thread"] = threading.Thread(target=go, daemon=True)
        marks["thread"].start()

    run_ = run_agent(moto, tmp, [sys.executable, str(script), "200", str(outage_s + 6)], on_start=chaos)
    marks["thread"].join(5)
    wd_log = run_["log_bytes"]
    shipped = run_["rs"].read_logs(RUN).data
    if len(shipped) != wd_log:
        raise RuntimeError(f"outage lost data: {len(shipped)} of {wd_log} bytes in the store")
    return [{"name": f"catch-up after a {outage_s:.0f} s S3 outage ({marks['backlog']:,} B spooled), lossless",
             "value": marks["caught_up"] - marks["back"], "baseline": None, "ratio": None,
             "target": "<= retry_max_s + log_flush_s", "unit": "s"}]


def run(quick: bool = True) -> list[dict]:
    """All agent figures; see the module docstring."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as d:
        tmp = Path(d)
        moto = MotoProc()
        try:
            rows += _overhead_and_cost(moto, tmp, quick)
            rows += _stepped_cost(moto, tmp, quick)
            for rate, dur in ((10.0, 6.0 if quick else 60.0), (10_000.0, 3.0 if quick else 20.0)):
                p50, p95, n = _latency(moto, tmp, rate, dur)
                for name, v in (("p50", p50), ("p95", p95)):
                    rows.append({"name": f"log latency {name} at {rate:,.0f} lines/s ({n:,} lines)", "value": v,
                                 "baseline": None, "ratio": None, "target": "p95 <= 3", "unit": "s"})
            rows += _economy(moto, tmp, quick)
        finally:
            moto.stop()
        outage_moto = Moto()  # in-process, so stopping and restarting it keeps the bucket
        try:
            rows += _outage(outage_moto, tmp, 5.0 if quick else 20.0)
        finally:
            outage_moto.stop()
    return rows


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(json.dumps(row))
