"""S3 -> SQS -> the watcher (issue 14 item 1) on moto's server, which delivers the bucket's
ObjectCreated notifications to the queue as S3 does: the Lambda handler fed the queue's batch,
and `ctl watch --events sqs://...` (a real process) long-polling it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from tests.fixtures.moto_server import REGION
from tests.ops.test_cli import CTL
from tests.ops.test_fakes import complete, fail, make_run
from tests.ops.test_push import _reader


def notify_queue(moto_server, store) -> str:
    """The queue and the bucket notification infra/terraform/events.tf declares, made with boto3."""
    sqs = moto_server.client("sqs")
    url = sqs.create_queue(QueueName=f"ev-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    moto_server.client("s3").put_bucket_notification_configuration(
        Bucket=store.bucket, NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": {"Key": {"FilterRules": [
                {"Name": "prefix", "Value": f"{store.prefix}/"}, {"Name": "suffix", "Value": suffix}]}}}
            for suffix in ("/_error", "/_complete")]})
    return url


def drain(sqs, url: str, want: int) -> list[dict]:
    """Long-poll until `want` messages came (each poll waits on the queue, not on a sleep)."""
    got: list[dict] = []
    for _ in range(30):
        got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
        if len(got) >= want:
            break
    return got


def as_lambda_event(msgs: list[dict]) -> dict:
    return {"Records": [{"eventSource": "aws:sqs", "messageId": m["MessageId"], "body": m["Body"],
                         "receiptHandle": m["ReceiptHandle"]} for m in msgs]}


def test_lambda_sweeps_just_the_runs_the_queue_names(s3_store, slack, moto_server, monkeypatch):
    from ops.lambda_handler import handler

    rs = RunStore(s3_store)
    url = notify_queue(moto_server, s3_store)
    now = time.time()
    oom, done, quiet = make_run(rs, "oom", now=now), make_run(rs, "done", now=now), make_run(rs, "quiet", now=now)
    fail(rs, oom, now, "cuda_oom")
    complete(rs, done, now)
    msgs = drain(moto_server.client("sqs"), url, 2)
    keys = [unquote_plus(r["s3"]["object"]["key"]) for m in msgs for r in json.loads(m["Body"]).get("Records", [])]
    assert sorted(keys) == sorted([f"training-runs/{done}/_complete", f"training-runs/{oom}/_error"])
    for k, v in {"TRAINCTL_STORE": s3_store.url, "TRAINCTL_S3_ENDPOINT": moto_server.endpoint,
                 "SLACK_WEBHOOK_URL": slack.webhook_url, "TRAINCTL_EC2": "0"}.items():
        monkeypatch.setenv(k, v)
    event = as_lambda_event(msgs)
    report = handler({**event, "now": now + 1}, None)
    assert report["active"] == 2 and report["sent"] == 2 and report["batchItemFailures"] == []
    assert quiet not in json.dumps(report) and L.load(rs, quiet).etag is None  # not read, not written
    texts = sorted(p["body"]["text"].splitlines()[0] for p in slack.posts)
    assert texts[0].startswith("✅ Training completed") and texts[1].startswith("🔥 Training FAILED: cuda_oom")
    again = handler({**event, "now": now + 2}, None)  # SQS delivers at least once: a redelivery
    assert again["sent"] == 0 and len(slack.posts) == 2


def save_stack_outputs(home: Path, **outputs) -> Path:
    """The outputs file `ctl provision` saves after an apply (every output the module declares, as
    `terraform output -json` gives them without the type wrappers), in the stack folder of `home`."""
    doc = {"instance_id": "i-0123456789abcdef0", "public_ip": "203.0.113.7", "public_dns": None,
           "ssh_user": "ubuntu", "region": REGION, "availability_zone": f"{REGION}a", "data_volume_id": "vol-1",
           "mount_point": "/mnt/training", "store_url": None, "watcher_function": "trainctl-watcher",
           "slack_webhook_parameter": "/trainctl/slack-webhook", "kept_on_destroy": {}, "events_queue": None,
           "slack_interactivity_url": None, **outputs}
    path = home / "infra" / "default" / "outputs.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def watch_env(moto_server, home: Path, **more) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env.update(moto_server.env(), TRAINCTL_HOME=str(home), **more)
    return env


@pytest.mark.parametrize("named_by", ["flag", "saved stack"])
def test_watch_long_polls_the_queue_and_posts_without_a_sweep(s3_store, slack, moto_server, tmp_path, named_by):
    rs = RunStore(s3_store)
    url = notify_queue(moto_server, s3_store)
    name = url.rsplit("/", 1)[1]
    rid = make_run(rs, now=time.time())
    home = tmp_path / "home"
    if named_by == "flag":
        events, how = ["--events", f"sqs://{name}"], f"markers pushed by QueueEvents ({name})"
    else:  # no --events: auto takes the queue from the stack `ctl provision` saved for this store
        save_stack_outputs(home, store_url=s3_store.url, events_queue=name)
        events, how = [], f"markers pushed by QueueEvents ({name}, the events_queue of stack 'default')"
    proc = subprocess.Popen([CTL, "watch", "--no-ec2", "--interval", "1h", "--store", s3_store.url, *events],
                            env=watch_env(moto_server, home, SLACK_WEBHOOK_URL=slack.webhook_url),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    swept, pushed = threading.Event(), threading.Event()
    _reader(proc, lines, swept, "sweep: 1 runs", {f"pushed: {rid}": pushed})
    try:
        assert swept.wait(60), "".join(lines)
        assert how in lines[0], "".join(lines)
        fail(rs, rid, time.time(), "cuda_oom")
        [post] = slack.wait_for_posts(1)
        assert post["body"]["text"].startswith("🔥 Training FAILED: cuda_oom")
        assert pushed.wait(60), "".join(lines)  # printed once its messages were deleted
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sum("sweep: " in line for line in lines) == 1
    sqs = moto_server.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


@pytest.mark.parametrize("stack", ["none saved", "queue off", "another store", "queue gone", "unreadable"])
def test_watch_auto_without_the_stacks_queue_is_schedule_only_and_says_why(s3_store, moto_server, tmp_path,
                                                                           stack):
    home = tmp_path / "home"
    want = {"none saved": f"schedule only: no saved stack 'default' ({home}/infra/default/outputs.json)",
            "queue off": "schedule only: stack 'default' (",
            "another store": f"notifies for s3://elsewhere/training-runs, not {s3_store.url}",
            "queue gone": "schedule only: the events_queue no-such-queue of stack 'default' (",
            "unreadable": f"schedule only: {home}/infra/default/outputs.json is not valid JSON"}[stack]
    if stack == "queue off":
        save_stack_outputs(home, store_url=s3_store.url, events_queue=None)
        want_too = "has no events_queue (push events off)"
    elif stack == "another store":
        save_stack_outputs(home, store_url="s3://elsewhere/training-runs", events_queue="trainctl-run-events")
        want_too = want
    elif stack == "queue gone":
        save_stack_outputs(home, store_url=s3_store.url, events_queue="no-such-queue")
        want_too = "cannot be found (AWS.SimpleQueueService.NonExistentQueue)"
    elif stack == "unreadable":  # cut short mid-write by hand, say
        save_stack_outputs(home, store_url=s3_store.url, events_queue="q").write_text('{"events_queue": ')
        want_too = "run `ctl provision` again or delete it"
    else:
        want_too = "--events sqs://<events_queue> pushes"
    rs = RunStore(s3_store)
    make_run(rs, now=time.time())
    proc = subprocess.Popen([CTL, "watch", "--no-ec2", "--interval", "1h", "--store", s3_store.url],
                            env=watch_env(moto_server, home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    swept = threading.Event()
    _reader(proc, lines, swept, "sweep: 1 runs")
    try:
        assert swept.wait(60), "".join(lines)  # the watcher runs on: the push path is only a speed-up
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert lines[0].startswith(f"watching {s3_store.url} every 3600s;"), lines[0]
    assert want in lines[0] and want_too in lines[0] and "markers pushed" not in lines[0], lines[0]


def test_watch_with_an_unknown_queue_is_one_line(s3_store, moto_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env.update(moto_server.env())
    res = subprocess.run([CTL, "watch", "--no-ec2", "--store", s3_store.url, "--events", "sqs://no-such-queue"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().startswith("Error: --events sqs://no-such-queue")
    assert len(res.stderr.strip().splitlines()) == 1
