"""The push path (issue 14): marker written -> alert posted, push against schedule-only, same run.

20 runs per source. For each, `_error` is written through RunStore at t0 and the clock stops when
the Slack stand-in has the run's post. Push: the watcher's real event source (watchdog on a local
store; moto's S3 -> SQS notification with a long poll) feeding `Watcher.sweep_runs`, exactly what
`ctl watch`'s wait does. Schedule-only: full sweeps every `ctl watch`'s 30 s interval scaled by
FACTOR (1/60: 0.5 s). Requests: what 100 idle healthy runs cost per hour at the 30 s interval,
today (full sweeps only) against push on (the same sweeps plus the pushed ones, none when idle).
"""

from __future__ import annotations

import io
import threading
import time

FACTOR = 1 / 60
N = 20


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _watcher(rs, slack):
    from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
    from ops.sweep import Watcher

    return Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())))


def _measure(rs, slack, drive, wait) -> list[float]:
    """Seconds from each run's `_error` write to its post, with `drive` running in a thread."""
    from tests.ops.test_fakes import fail, make_run

    now = time.time()
    rids = [make_run(rs, f"push{i:02d}", now=now) for i in range(N)]
    stop = threading.Event()
    th = threading.Thread(target=drive, args=(stop,), daemon=True)
    th.start()
    out = []
    try:
        time.sleep(0.3)  # the source is listening and the first full sweep has seen them healthy
        for rid in rids:
            t0 = time.monotonic()
            fail(rs, rid, time.time(), "cuda_oom")
            wait(lambda r=rid: any(r in p["body"].get("text", "") for p in slack.posts), 60, f"{rid} alert")
            out.append(time.monotonic() - t0)
    finally:
        stop.set()
        th.join(timeout=30)
    return out


def _pushed(w, events):
    def drive(stop):
        events.start()
        try:
            w.sweep(time.time())
            while not stop.is_set():
                ids = events.wait(2)  # returns as soon as a marker arrives
                if ids:
                    w.sweep_runs(ids, time.time())
                events.done()
        finally:
            events.stop()
    return drive


def _scheduled(w, every: float):
    def drive(stop):
        while not stop.is_set():
            w.sweep(time.time())
            stop.wait(every)
    return drive


def _queue(moto, store) -> str:
    from tests.ops.test_push_sqs import notify_queue

    return notify_queue(moto, store)


def latency_rows(moto, slack, tmp, wait) -> list[dict]:
    """p50/p95 marker -> post for push and schedule-only, local store and moto's SQS."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_local import LocalStore
    from agent.protocol.store_s3 import S3Store
    from ops.push import FolderEvents, QueueEvents

    every = 30 * FACTOR
    rows = []
    for label, target in (("local store", 2.0), ("S3 via moto's SQS", 10.0)):
        res = {}
        for mode in ("push", "schedule"):
            if label == "local store":
                rs = RunStore(LocalStore(tmp / f"{mode}-store"))
                events = FolderEvents(rs.store.root)
            else:
                rs = RunStore(S3Store(moto.new_bucket(), "training-runs", endpoint_url=moto.endpoint,
                                      region="us-east-1"))
                events = QueueEvents(_queue(moto, rs.store), rs.store.bucket, "training-runs", moto.endpoint)
            slack.posts.clear()
            w = _watcher(rs, slack)
            drive = _pushed(w, events) if mode == "push" else _scheduled(w, every)
            res[mode] = _measure(rs, slack, drive, wait)
        for q in (0.5, 0.95):
            push, sched = _pct(res["push"], q), _pct(res["schedule"], q)
            rows.append({"name": f"marker -> alert p{int(q * 100)}, {label} ({N} runs; schedule {every:g} s)",
                         "value": push, "baseline": sched, "ratio": push / sched,
                         "target": f"p95 <= {target:g} s" if q == 0.95 else "-", "unit": "s"})
    return rows


def request_rows(moto, count) -> list[dict]:
    """S3 requests per hour for 100 idle healthy runs: 30 s full sweeps, with and without push on."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_s3 import S3Store
    from ops.alerts.slack import ConsoleSink, Notifier
    from ops.push import QueueEvents
    from ops.sweep import Watcher
    from tests.ops.test_fakes import make_run

    rs = RunStore(S3Store(moto.new_bucket(), "training-runs", endpoint_url=moto.endpoint, region="us-east-1"))
    now = time.time()
    for i in range(100):
        make_run(rs, f"idle{i:03d}", now=now)
    w = Watcher(rs, Notifier(None, ConsoleSink(io.StringIO())))
    w.sweep(now)
    calls = count(rs)
    w.sweep(now + 1)
    per_sweep = len(calls)
    events = QueueEvents(_queue(moto, rs.store), rs.store.bucket, "training-runs", moto.endpoint)
    calls.clear()
    t0 = time.monotonic()
    polls = 0
    while time.monotonic() - t0 < 3:  # idle: the long polls come back empty, nothing is swept
        ids = events.wait(1)
        polls += 1
        if ids:
            w.sweep_runs(ids, time.time())
        events.done()
    window = time.monotonic() - t0
    today = per_sweep * 3600 / 30
    push = today + len(calls) * 3600 / window
    return [{"name": "S3 requests per hour, 100 idle healthy runs (30 s sweeps), push on", "value": push,
             "baseline": today, "ratio": push / today, "target": "<= today's", "unit": "requests/h"},
            {"name": "SQS long polls per hour while idle (20 s each in ctl watch)", "value": 3600 / 20,
             "baseline": None, "ratio": None, "target": f"measured {polls} empty polls in {window:.1f} s, no S3",
             "unit": "requests/h"}]
