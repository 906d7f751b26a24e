"""The agent's sampling (samples.json, issue 15): agent CPU and RSS with sampling on vs off over the
same scaled run, and the store bytes of the series per hour of run.

A 10-minute run at the defaults (heartbeat 30 s, a sample with each, stored every 60 s) scaled by
1/30: 20 s, heartbeat 1 s, a sample every 1 s, stored every 2 s; `--full` runs the whole 10
minutes at the real intervals. The trainer sleeps (its CPU is not the agent's), an nvidia-smi
stand-in is on PATH for both (heartbeats call it too). The agent's own CPU (user + system of its
process, read just before it exits) and peak RSS are taken from psutil; runs alternate on/off and
the medians are compared.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]
SMI = '#!/bin/sh\necho "0, NVIDIA A10G, 87, 20480, 23028, 61"\n'
TRAINER = "import time, sys; time.sleep(float(sys.argv[1]))"


def _one(tmp: Path, n: int, sample_s: float, scale: float, duration: float) -> dict:
    """One agent run around a sleeping trainer: its CPU seconds, peak RSS (MB), samples.json bytes."""
    run_id = f"bench-20260101-{120000 + n:06d}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
           "TRAINCTL_SAMPLE_S": str(sample_s), "TRAINCTL_SAMPLES_WRITE_S": str(60 * scale)}
    args = [*CTL, "agent", "run", "--run-id", run_id, "--store", str(tmp / "store"), "--workdir", str(tmp / f"wd{n}"),
            "--heartbeat-s", str(30 * scale), "--progress-s", str(5 * scale), "--stop-poll-s", str(10 * scale),
            "--latest-s", str(10 * scale), "--nice", "0", "--", sys.executable, "-c", TRAINER, str(duration)]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ps, cpu, rss = psutil.Process(proc.pid), 0.0, 0
    while proc.poll() is None:
        try:
            t, m = ps.cpu_times(), ps.memory_info()
            cpu, rss = t.user + t.system, max(rss, m.rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    raw = (tmp / "store" / run_id / "samples.json")
    return {"cpu": cpu, "rss_mb": rss / 2**20, "samples_bytes": raw.stat().st_size if raw.exists() else 0}


def run(quick: bool = True) -> list[dict]:
    scale, duration, reps = (1 / 30, 20.0, 3) if quick else (1.0, 600.0, 1)
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as d:
        tmp = Path(d)
        (tmp / "bin").mkdir()
        (tmp / "bin" / "nvidia-smi").write_text(SMI)
        (tmp / "bin" / "nvidia-smi").chmod(0o755)
        on, off = [], []
        for i in range(reps):  # alternate, so drift in the machine's load hits both alike
            off.append(_one(tmp, 2 * i, 0.0, scale, duration))
            on.append(_one(tmp, 2 * i + 1, 30 * scale, scale, duration))
    cpu_on, cpu_off = statistics.median(r["cpu"] for r in on), statistics.median(r["cpu"] for r in off)
    rss_on, rss_off = statistics.median(r["rss_mb"] for r in on), statistics.median(r["rss_mb"] for r in off)
    bytes_run = statistics.median(r["samples_bytes"] for r in on)
    hours = duration / scale / 3600.0  # the run the scaled one stands for
    return [
        {"name": f"agent CPU, sampling on vs off ({duration:g} s run, intervals x{scale:.3g})", "value": cpu_on,
         "baseline": cpu_off, "ratio": cpu_on / cpu_off if cpu_off else None, "target": "ratio <= 1.05",
         "unit": "cpu-s"},
        {"name": "agent peak RSS, sampling on vs off", "value": rss_on, "baseline": rss_off,
         "ratio": rss_on / rss_off if rss_off else None, "target": "+5 MB at most", "unit": "MB"},
        {"name": "samples.json bytes per hour of run (bounded: 720 points at most)",
         "value": bytes_run / hours if hours else None, "baseline": None, "ratio": None, "target": "info",
         "unit": "B/h"},
    ]


if __name__ == "__main__":
    print(json.dumps(run(quick="--full" not in sys.argv), indent=2))
