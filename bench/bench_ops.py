"""Watcher benchmarks: detection latency with the real agent, and sweep cost at scale, on moto.

Detection latency: every interval is scaled down by one factor (1/60: heartbeat 0.5 s, grace 1 s,
progress timeout 15 s); `ctl agent run` wraps a fake trainer writing real progress lines; the
watcher sweeps every 0.25 s and posts to the Slack stand-in. Each figure is a multiple of
heartbeat + grace; target <= 1.0x + one sweep interval. For a hung trainer the clock starts at the
progress-timeout deadline (the earliest moment "hung" is true), so the figure is the detection
delay the watcher adds.

Sweep cost: N runs of which A are active, on moto's S3. The indexed sweep against a naive sweep
that reads every run (metadata, heartbeat, both markers), both measured in this run.

Hang to alert and false hung alerts (issue 12, bench/ops_hang.py): the agent's real Cadence publishing
heartbeats and the watcher's real assess at every sweep, on a simulated clock, for a trainer stepping
every 2 s (log-normal; evaluations and saves of 10-40 steps): the adaptive deadline against the fixed
15-minute timeout in the same run, at the agent's default 30 s heartbeat with `ctl watch`'s 30 s sweep,
and at a 2 s heartbeat and sweep (the figure is then the deadline itself).

The push path (issue 14, bench/ops_push.py): marker written -> alert posted, p50/p95 over 20 runs,
pushed (watchdog; moto's S3 -> SQS) against schedule-only sweeps at a scaled interval, and S3
requests per hour for 100 idle healthy runs with push on against today's.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FACTOR = 1 / 60
SWEEP_S = 0.25
TRAINER = """
import json, os, sys, time
flag = sys.argv[1]
with open(os.environ["TRAINCTL_PROGRESS_FILE"], "a") as f:
    f.write(json.dumps({"phase": "training"}) + "\\n"); f.flush()
    step = 0
    while True:
        if not os.path.exists(flag):
            step += 1
            f.write(json.dumps({"step": step, "total_steps": 10**6, "loss": 2.0 - step * 1e-4}) + "\\n"); f.flush()
            print(f"step {step}", flush=True)
        time.sleep(0.1)
"""


def _servers():
    from tests.fixtures.moto_server import MotoServer, _fake_credentials
    from tests.fixtures.slack import SlackStandIn

    _fake_credentials()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request skews the timings
    moto, slack = MotoServer(), SlackStandIn()
    moto.start()
    slack.start()
    return moto, slack


def _run_store(moto):
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_s3 import S3Store

    return RunStore(S3Store(moto.new_bucket(), "training-runs", endpoint_url=moto.endpoint, region="us-east-1"))


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.02)
    raise TimeoutError(f"bench_ops: timed out waiting for {what}")


def _latency(scenario: str, moto, slack, tmp: Path) -> float:
    """Seconds from the event (or the hung deadline) to the alert, over heartbeat + grace."""
    from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
    from ops.state import Settings
    from ops.sweep import Watcher

    settings = Settings().scaled(FACTOR)
    hb_s = 30 * FACTOR
    rs = _run_store(moto)
    rid = f"lat-{scenario}-20270101-000000"
    flag, script = tmp / f"{scenario}.hang", tmp / "trainer.py"
    script.write_text(TRAINER)
    ctl = os.path.join(os.path.dirname(sys.executable), "ctl")
    agent = subprocess.Popen(
        [ctl, "agent", "run", "--run-id", rid, "--store", rs.url, "--endpoint-url", moto.endpoint,
         "--workdir", str(tmp / rid), "--heartbeat-s", str(hb_s), "--stop-poll-s", "0.5", "--progress-s", "0.1",
         "--latest-s", "0.5", "--log-flush-s", "0.5", "--stop-grace-s", "1", "--finalize-timeout-s", "30",
         "--", sys.executable, str(script), str(flag)],
        env={**os.environ, **moto.env()}, start_new_session=True, stdout=open(os.devnull, "wb"),
        stderr=open(tmp / f"{scenario}.agent.log", "wb"))
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), settings)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            w.sweep(time.time())
            stop.wait(SWEEP_S)

    th = threading.Thread(target=loop, daemon=True)
    trainer_pid = None
    try:
        hb = _wait(lambda: (h := rs.read_heartbeat(rid)) and (h.last_step or 0) >= 3 and h, 60, "a training agent")
        trainer_pid = hb.trainer_pid
        th.start()
        time.sleep(3 * SWEEP_S)  # the watcher has seen it healthy
        posted = len(slack.posts)
        t_event = time.time()
        if scenario == "trainer-killed":
            os.kill(trainer_pid, signal.SIGKILL)
        elif scenario == "agent-killed":
            os.kill(agent.pid, signal.SIGKILL)
        else:
            flag.touch()
            t_event += settings.progress_timeout_s
        _wait(lambda: any(rid in p["body"].get("text", "") for p in slack.posts[posted:]), 120, f"{scenario} alert")
        t_alert = time.time()
        return (t_alert - t_event) / (hb_s + settings.grace_s)
    finally:
        stop.set()
        if th.is_alive():
            th.join()
        for pid in (agent.pid, trainer_pid):
            try:
                if pid:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.wait(timeout=10)


def _count(rs) -> list[str]:
    calls: list[str] = []
    rs.store.client.meta.events.register("before-send.s3", lambda request, **_: calls.append(request.url))
    return calls


def _populate(rs, n_runs: int, n_active: int, now: float) -> None:
    from agent.protocol import records as p

    def one(i: int):
        rid = f"run{i:05d}-20270101-000000"
        rs.write_metadata(p.Metadata(run_id=rid, created=now - 86400 * 5, phase="training"))
        if i < n_active:
            rs.write_heartbeat(rid, p.Heartbeat(ts=now - 2, seq=1, agent_pid=1, trainer_alive=True, phase="training",
                                                last_progress_ts=now - 3, last_step=10))
        else:
            rs.write_complete(rid, p.CompleteMarker(ts=now - 86400 * 4, duration_s=3600,
                                                    final_metrics={"loss": 1.0}))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n_runs)))


def _naive_sweep(rs, now: float) -> None:
    """What a watcher without an index does: read every run, every sweep."""
    from agent.protocol import records as p

    for rid in rs.list_runs():
        rs.read_metadata(rid)
        rs.read_heartbeat(rid)
        rs.store.exists(rs.k(rid, p.ERROR))
        rs.store.exists(rs.k(rid, p.COMPLETE))


def _scale(moto, n_runs: int, n_active: int) -> list[dict]:
    from ops.alerts.slack import ConsoleSink, Notifier
    from ops.sweep import Watcher

    rs = _run_store(moto)
    now = time.time()
    _populate(rs, n_runs, n_active, now)
    w = Watcher(rs, Notifier(None, ConsoleSink(io.StringIO())))
    calls = _count(rs)
    t0 = time.perf_counter()
    w.sweep(now)  # first sight: every finished run is recorded once and joins the done index
    first_s, first_n = time.perf_counter() - t0, len(calls)
    w.sweep(now + 1)
    calls.clear()
    t0 = time.perf_counter()
    rep = w.sweep(now + 2)
    steady_s, steady = time.perf_counter() - t0, list(calls)
    assert rep.active == n_active, rep.as_dict()
    calls.clear()
    t0 = time.perf_counter()
    _naive_sweep(rs, now + 3)
    naive_s, naive_n = time.perf_counter() - t0, len(calls)
    pages = sum("list-type=2" in c and ("delimiter=" in c or "_index" in c) for c in steady)
    budget = 3 * n_active + max(pages, 2 * math.ceil(n_runs / 1000))
    label = f"{n_runs} runs, {n_active} active"
    return [
        {"name": f"sweep S3 requests ({label})", "value": float(len(steady)), "baseline": float(naive_n),
         "ratio": len(steady) / naive_n, "target": f"<= {budget} (3 x active + {pages} listing pages)",
         "unit": "requests"},
        {"name": f"sweep wall time ({label})", "value": steady_s, "baseline": naive_s, "ratio": steady_s / naive_s,
         "target": "< naive", "unit": "s"},
        {"name": f"first sweep, builds the done index ({label})", "value": first_s, "baseline": naive_s,
         "ratio": first_s / naive_s, "target": f"one-off ({first_n} requests)", "unit": "s"},
    ]


def _orphan_scan(moto, n_boxes: int, n_idle: int) -> list[dict]:
    """Requests a sweep with EC2 on costs with the orphan scan (one tagged describe_instances, one
    `_orphans/` listing, one read per idle box) against the same sweep with the scan off."""
    import boto3

    from agent.protocol import records as p
    from ops.alerts.slack import ConsoleSink, Notifier
    from ops.ec2 import TAG_KEY, TAG_VALUE, Ec2Enricher
    from ops.state import Settings
    from ops.sweep import Watcher

    region = "eu-west-3"  # a region of its own: nothing else in this moto runs there
    ec2 = boto3.client("ec2", endpoint_url=moto.endpoint, region_name=region)
    res = ec2.run_instances(ImageId="ami-00000000000000001", InstanceType="g5.2xlarge", MinCount=n_boxes,
                            MaxCount=n_boxes, TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                {"Key": TAG_KEY, "Value": TAG_VALUE}]}])
    rs = _run_store(moto)
    now = time.time()
    for i, inst in enumerate(res["Instances"][n_idle:]):
        rid = f"busy{i:03d}-20270101-000000"
        rs.write_metadata(p.Metadata(run_id=rid, created=now - 600, phase="training", instance_id=inst["InstanceId"],
                                     instance_type="g5.2xlarge", region=region))
        rs.write_heartbeat(rid, p.Heartbeat(ts=now - 2, seq=1, agent_pid=1, trainer_alive=True, phase="training",
                                            last_progress_ts=now - 3, last_step=10))
    out = {}
    for label, after in (("off", None), ("on", 1800.0)):
        enricher = Ec2Enricher(moto.endpoint, default_region=region)
        w = Watcher(rs, Notifier(None, ConsoleSink(io.StringIO())), Settings(orphan_after_s=after), ec2=enricher)
        w.sweep(now)
        w.sweep(now + 1)
        calls = _count(rs)
        ec2_before = enricher.calls + enricher.tag_calls
        rep = w.sweep(now + 2)
        assert rep.idle_instances == (n_idle if after else 0), rep.as_dict()
        out[label] = len(calls) + enricher.calls + enricher.tag_calls - ec2_before
    return [{"name": f"sweep requests with orphan scan ({n_boxes} tagged boxes, {n_idle} idle)",
             "value": float(out["on"]), "baseline": float(out["off"]), "ratio": out["on"] / out["off"],
             "target": f"<= {out['off'] + 2 + n_idle} (scan off + 1 EC2 call + 1 listing + {n_idle} idle reads)",
             "unit": "requests"}]


def run(quick: bool = True) -> list[dict]:
    """Rows for `make bench` (quick: 1,000 runs / 10 active; full: 10,000 / 100)."""
    from bench.bench_cadence import make_trace
    from bench.ops_hang import rows as hang_rows
    from bench.ops_push import latency_rows as push_rows
    from bench.ops_push import request_rows as push_requests

    rows = hang_rows(quick, make_trace, heartbeat_s=30.0, sweep_s=30.0) + hang_rows(quick, make_trace, 2.0, 2.0)
    moto, slack = _servers()
    try:
        hb_grace = 30 * FACTOR + 60 * FACTOR
        target = f"<= {1 + SWEEP_S / hb_grace:.2f}x (1.0x + one {SWEEP_S:g} s sweep)"
        with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
            for scenario in ("trainer-killed", "agent-killed", "trainer-hung"):
                x = _latency(scenario, moto, slack, Path(tmp))
                rows.append({"name": f"detect {scenario} (hb {30 * FACTOR:g}s + grace {60 * FACTOR:g}s)",
                             "value": x, "baseline": None, "ratio": None, "target": target,
                             "unit": "x (heartbeat+grace)"})
        n_runs, n_active = (1000, 10) if quick else (10000, 100)
        rows += _scale(moto, n_runs, n_active)
        rows += _orphan_scan(moto, 20, 3)
        with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
            rows += push_rows(moto, slack, Path(tmp), _wait)
        rows += push_requests(moto, _count)
    finally:
        slack.stop()
        moto.stop()
    return rows


if __name__ == "__main__":
    for r in run(quick="--full" not in sys.argv):
        print(r)
