"""The push path (issue 14 item 1): a marker the agent writes is swept at once, from watchdog on a
local store or from the queue an S3 bucket notifies; duplicate, late and shuffled events change nothing."""

from __future__ import annotations

import io
import json
import random
import subprocess
import threading
import time

from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.push import run_id_of_key, runs_from_sqs_batch
from ops.sweep import Watcher
from tests.ops.test_cli import CTL
from tests.ops.test_fakes import T0, complete, fail, make_run


def _reader(proc, lines: list[str], seen: threading.Event, needle: str, more: dict | None = None):
    """Collect the process's stderr; set `seen` (and each of `more`'s events) when its needle shows."""
    wanted = {needle: seen, **(more or {})}

    def read():
        for line in iter(proc.stderr.readline, ""):
            lines.append(line)
            for text, ev in wanted.items():
                if text in line:
                    ev.set()
    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_watch_posts_a_failure_the_moment_its_marker_appears_on_a_local_store(local_store, slack):
    rs = RunStore(local_store)
    rid = make_run(rs, now=time.time())
    # An hour between full sweeps: only the pushed marker can bring this alert.
    proc = subprocess.Popen([CTL, "watch", "--no-ec2", "--interval", "1h", "--store", str(local_store.root),
                             "--slack-webhook", slack.webhook_url], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    swept = threading.Event()
    _reader(proc, lines, swept, "sweep: 1 runs")
    try:
        assert swept.wait(60), "".join(lines)
        assert slack.posts == [] and "markers pushed by FolderEvents" in "".join(lines)
        fail(rs, rid, time.time(), "cuda_oom")
        [post] = slack.wait_for_posts(1)
        assert post["body"]["text"].startswith("🔥 Training FAILED: cuda_oom") and rid in post["body"]["text"]
        complete(rs, make_run(rs, "other", now=time.time()), time.time())
        posts = slack.wait_for_posts(2)
        assert "Training completed" in posts[1]["body"]["text"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sum("sweep: " in line for line in lines) == 1  # both came by push, not by the schedule
    assert L.load(rs, rid).ledger.closed


def test_keys_that_name_a_run(tmp_path):
    rid = "mistral-20270115-080000"
    assert run_id_of_key(f"training-runs/{rid}/_error", "training-runs") == rid
    assert run_id_of_key(f"{rid}/_complete") == rid
    for key in (f"training-runs/{rid}/attempts/1/_error", f"training-runs/{rid}/_alerts.json",
                f"other/{rid}/_error", "training-runs/not a run/_error", f"training-runs/{rid}/logs/_error"):
        assert run_id_of_key(key, "training-runs") is None


def s3_note(bucket: str, key: str) -> dict:
    """What S3 puts in the queue for one ObjectCreated (the key URL-encoded, as S3 does)."""
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": bucket}, "object": {"key": key.replace(":", "%3A")}}}]}


def sqs_batch(notes: list[dict]) -> dict:
    return {"Records": [{"eventSource": "aws:sqs", "messageId": f"m{i}", "body": json.dumps(n)}
                        for i, n in enumerate(notes)]}


def test_replayed_late_and_shuffled_events_send_each_alert_once(s3_store, slack):
    rs = RunStore(s3_store)
    bucket, prefix = s3_store.bucket, s3_store.prefix
    rids = [make_run(rs, f"run{i}") for i in range(4)]
    for rid in rids[:3]:
        fail(rs, rid, T0 + 1, "cuda_oom")
    complete(rs, rids[3], T0 + 1)
    notes = [s3_note(bucket, f"{prefix}/{rid}/{'_complete' if rid == rids[3] else '_error'}") for rid in rids]
    notes.append({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket})  # names no run
    notes.append(s3_note(bucket, f"{prefix}/{rids[0]}/attempts/1/_error"))
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), owner="push")
    rng = random.Random(14)
    for i in range(5):  # the same events replayed five times, shuffled, in batches of any size
        batch = notes * 2
        rng.shuffle(batch)
        for part in (batch[:3], batch[3:]):
            ids = set().union(*runs_from_sqs_batch(sqs_batch(part), bucket, prefix).values())
            w.sweep_runs(ids, T0 + 5 + i * 60)
    assert len(slack.posts) == 4
    heads = sorted(p["body"]["text"].splitlines()[0].split(":")[0] for p in slack.posts)
    assert heads == ["✅ Training completed"] + ["🔥 Training FAILED"] * 3
    for rid in rids:
        led = L.load(rs, rid).ledger
        assert led.closed and led.outbox == [] and [e["kind"] for e in led.sent] == ["final"]
    # A late event for a run whose marker is gone (deleted by hand) creates nothing.
    ghost = "ghost-20270115-080000"
    rep = w.sweep_runs(runs_from_sqs_batch(sqs_batch([s3_note(bucket, f"{prefix}/{ghost}/_error")]), bucket,
                                           prefix)["m0"], T0 + 400)
    assert rep.active == 0 and not rs.run_exists(ghost)
