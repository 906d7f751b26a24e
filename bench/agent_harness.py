"""What the agent benchmarks run: trainer scripts, moto's S3 server (in-process or its own process),
and one `ctl agent run` subprocess measured for CPU, peak RSS and its own stats."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]
RUN = "bench-20260101-000000"
SETTLE_S = "1.5"

FLOOD = r'''
import json, resource, sys, time
n, out = int(sys.argv[1]), sys.argv[2]
time.sleep(float(sys.argv[3]))  # a real trainer spends seconds loading before it logs; the agent settles too
ru0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
w = sys.stdout.write
for i in range(n):
    w(f"step {i:07d} loss=1.2345 lr=0.0002 tokens_per_s=2150.0 grad_norm=0.41 epoch=0.12 padding text\n")
sys.stdout.flush()
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"wall": time.perf_counter() - t0, "cpu": ru.ru_utime + ru.ru_stime,
           "flood_cpu": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime}, open(out, "w"))
'''

PACED = r'''
import sys, time
rate, dur = float(sys.argv[1]), float(sys.argv[2])
n, t0 = 0, time.time()
while time.time() - t0 < dur:
    due = int((time.time() - t0) * rate) + 1
    while n < due:
        sys.stdout.write(f"{time.time():.6f} line {n} loss=1.234 some ordinary training log text\n")
        n += 1
    sys.stdout.flush()
    time.sleep(min(0.01, 1.0 / rate))
'''


# A trainer-shaped load: each step burns CPU like a (CPU-bound) training step, prints a few log
# lines and appends a progress record, as `ctl train sft` does. The agent's share of the CPU
# against this is the figure that matters on a box; the flood above is its worst case.
STEPPED = r'''
import json, os, resource, sys, time
steps, out = int(sys.argv[1]), sys.argv[2]
prog = open(os.environ["TRAINCTL_PROGRESS_FILE"], "a")
x = 0.0
for step in range(1, steps + 1):
    t = time.process_time()
    while time.process_time() - t < 0.03:
        x = (x * 1.0000001 + 1.0) % 1e9
    for k in range(5):
        print(f"step {step} micro-batch {k} loss={2.0 / step:.4f} lr=0.0002 tokens/s=2150.0", flush=True)
    prog.write(json.dumps({"step": step, "total_steps": steps, "loss": 2.0 / step, "lr": 2e-4}) + "\n")
    prog.flush()
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"cpu": ru.ru_utime + ru.ru_stime}, open(out, "w"))
'''


class Moto:
    def __init__(self):
        import logging
        import socket

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(self.env)

    def bucket(self) -> str:
        import uuid

        import boto3

        name = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return name

    def run_store(self, bucket: str):
        from agent.protocol.runstore import RunStore
        from agent.protocol.store_s3 import S3Store

        return RunStore(S3Store(bucket, "runs", endpoint_url=self.endpoint, region="us-east-1"))

    def stop(self):
        inner = self.server._server
        self.server.stop()
        if inner is not None:
            inner.server_close()  # clients now get "connection refused": a real outage

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


class MotoProc(Moto):
    """moto's server in its own process at the lowest CPU priority: on this 2-core box it stands in
    for S3, which on a real g5 box runs elsewhere and costs the trainer no CPU at all."""

    def __init__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.nice(19))
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(self.env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)

    def start(self):
        raise NotImplementedError("state lives in the process; use Moto for outages")


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def hwm_sampler(pid: int, out: dict, stop: threading.Event):
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out["hwm_kb"] = max(out.get("hwm_kb", 0), int(line.split()[1]))
        except (OSError, ValueError):
            pass
        stop.wait(0.05)


def run_agent(moto: Moto, tmp: Path, trainer: list[str], extra: list[str] = (), on_start=None) -> dict:
    """Run one agent to completion; returns its CPU (children rusage minus trainer's own), peak RSS, stats."""
    bucket = moto.bucket()
    wd = tmp / f"wd-{bucket}"
    env = {**os.environ, **moto.env, "PYTHONPATH": str(REPO)}
    cmd = [*CTL, "agent", "run", "--run-id", RUN, "--store", f"s3://{bucket}/runs", "--endpoint-url", moto.endpoint,
           "--workdir", str(wd), *extra, "--", *trainer]
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mem, stop = {}, threading.Event()
    sampler = threading.Thread(target=hwm_sampler, args=(proc.pid, mem, stop), daemon=True)
    sampler.start()
    if on_start:
        on_start(moto.run_store(bucket), wd)
    _, err = proc.communicate(timeout=900)
    stop.set()
    if proc.returncode != 0:
        raise RuntimeError(f"agent failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    state = json.loads((wd / "agent_state.json").read_text())
    return {"cpu_all": children_cpu() - cpu0, "wall": time.perf_counter() - t0, "hwm_mb": mem.get("hwm_kb", 0) / 1024,
            "stats": state.get("stats", {}), "log_bytes": (wd / "trainer.log").stat().st_size,
            "rs": moto.run_store(bucket)}
