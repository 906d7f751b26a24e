"""`ctl watch` as a real subprocess, bad input, and the Lambda handler running the same sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from agent.protocol.errors import ConfigError
from agent.protocol.runstore import RunStore
from agent.protocol.stores import open_store
from tests.ops.test_fakes import SECRET_LINES, assert_no_secret, fail, make_run

CTL = os.path.join(os.path.dirname(sys.executable), "ctl")  # the installed console script, as users run it


def ctl(args, env=None, timeout=60):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    return subprocess.run([CTL, *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_watch_once_posts_to_webhook_from_env_and_only_once(s3_store, slack, moto_server):
    rs = RunStore(s3_store)
    rid = make_run(rs, now=time.time())
    fail(rs, rid, time.time(), "host_oom", log_tail=SECRET_LINES)
    env = {**moto_server.env(), "SLACK_WEBHOOK_URL": slack.webhook_url}
    args = ["watch", "--once", "--no-ec2", "--store", s3_store.url]
    first = ctl(args, env)
    assert first.returncode == 0, first.stderr
    assert "1 runs, 1 active (failed 1); sent 1" in first.stderr
    assert "testwebhooksecret0001" not in first.stderr + first.stdout
    second = ctl(args, env)
    assert second.returncode == 0 and "0 active" in second.stderr
    [post] = slack.posts
    assert post["body"]["text"].startswith("🔥 Training FAILED: host_oom")
    assert_no_secret(post["body"])


def test_watch_without_slack_prints_the_same_content(tmp_path):
    rs = RunStore(open_store(str(tmp_path / "runs")))
    now = time.time()
    rid = make_run(rs, now=now, hb_age=600)
    res = ctl(["watch", "--once", "--no-ec2", "--store", str(tmp_path / "runs")])
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "🔇 Agent silent" in out and rid in out and "Status: AGENT SILENT" in out
    assert "Action required" in out and f"ctl tail {rid}" in out
    assert "alerts to console" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--interval", "soon"], "--interval: cannot read 'soon' as a duration; use e.g. 90s, 15m, 4h, 1d"),
    (["--interval", "0"], "--interval must be positive"),
    (["--heartbeat-grace", "-5m"], "--heartbeat-grace: cannot read '-5m' as a duration"),
    (["--progress-timeout", "0"], "--progress-timeout must be positive"),
    (["--orphan-after", "soon"], "--orphan-after: cannot read 'soon' as a duration; use e.g. 90s, 15m, 4h, 1d or 'never'"),
    (["--slack-webhook", "hooks.slack.com/x"], "--slack-webhook must be an https:// URL"),
    (["--slack-token", "xoxb-123456789012-abcdefghijkl"], "--slack-token needs --slack-channel"),
    (["--store", "ftp://nowhere"], "unsupported store URL"),
])
def test_watch_bad_input_is_one_clean_line(tmp_path, args, message):
    res = ctl(["watch", "--once", "--no-ec2", "--store", str(tmp_path), *args])
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().startswith("Error: ") and message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "xoxb-123456789012" not in res.stderr


def test_lambda_handler_runs_one_sweep(s3_store, slack, moto_server, monkeypatch):
    from ops.lambda_handler import handler

    rs = RunStore(s3_store)
    now = time.time()
    rid = make_run(rs, now=now)
    fail(rs, rid, now, "nan_loss")
    monkeypatch.setenv("TRAINCTL_STORE", s3_store.url)
    monkeypatch.setenv("TRAINCTL_S3_ENDPOINT", moto_server.endpoint)
    monkeypatch.setenv("TRAINCTL_EC2_ENDPOINT", moto_server.endpoint)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.webhook_url)
    monkeypatch.setenv("TRAINCTL_HEARTBEAT_GRACE", "2m")
    report = handler({"now": now + 5}, None)
    assert report["sent"] == 1 and report["states"] == {"failed": 1} and report["done"] == 1
    assert handler({"now": now + 65}, None)["active"] == 0
    assert len(slack.posts) == 1 and "nan_loss" in slack.posts[0]["body"]["text"]


def test_lambda_handler_without_store_says_what_to_set(monkeypatch):
    from ops.lambda_handler import handler

    monkeypatch.delenv("TRAINCTL_STORE", raising=False)
    with pytest.raises(ConfigError, match="TRAINCTL_STORE is not set"):
        handler({}, None)


LAMBDA_SANDBOX = """
import json, sys
sys.modules["rich"] = None   # the Lambda zip holds agent, ops and slack_sdk only (plus the runtime's boto3)
sys.modules["click"] = None
from ops.lambda_handler import handler
print("REPORT " + json.dumps(handler({"now": float(sys.argv[1])}, None)))
"""


@pytest.mark.parametrize("stored,posts", [("webhook", 1), ("unset", 0)])
def test_lambda_reads_webhook_from_ssm_without_rich_or_click(s3_store, slack, moto_server, stored, posts):
    rs = RunStore(s3_store)
    now = time.time()
    rid = make_run(rs, now=now)
    fail(rs, rid, now, "disk_full")
    name = f"/trainctl/test/{rid}/{stored}"
    moto_server.client("ssm").put_parameter(Name=name, Type="SecureString", Overwrite=True,
                                            Value=slack.webhook_url if stored == "webhook" else "unset")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env.update(moto_server.env(), TRAINCTL_STORE=s3_store.url, SLACK_WEBHOOK_SSM_PARAMETER=name,
               TRAINCTL_SSM_ENDPOINT=moto_server.endpoint, TRAINCTL_EC2="0")
    res = subprocess.run([sys.executable, "-c", LAMBDA_SANDBOX, str(now + 5)], capture_output=True, text=True,
                         env=env, timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.split("REPORT ", 1)[1])
    assert report["sent"] == 1 and report["done"] == 1
    assert len(slack.posts) == posts
    if stored == "unset":
        assert "Training FAILED: disk_full" in res.stdout and "is not set yet" in res.stdout
    assert "testwebhooksecret0001" not in res.stdout + res.stderr


def test_watch_once_on_missing_bucket_is_one_clean_error(moto_server):
    res = ctl(["watch", "--once", "--no-ec2", "--store", "s3://no-such-bucket-trainctl/runs",
               "--endpoint-url", moto_server.endpoint], moto_server.env())
    assert res.returncode == 1 and res.stderr.splitlines()[-1].startswith("Error: S3 list")
    assert "NoSuchBucket" in res.stderr and "Traceback" not in res.stderr


def test_watch_loop_survives_a_store_outage(private_moto, slack):
    """The watcher keeps sweeping through an S3 outage and alerts once the store is back."""
    bucket = private_moto.new_bucket()
    store = open_store(f"s3://{bucket}/runs", endpoint_url=private_moto.endpoint)
    env = {**private_moto.env(), "SLACK_WEBHOOK_URL": slack.webhook_url}
    proc = subprocess.Popen([CTL, "watch", "--no-ec2", "--interval", "0.2", "--store", store.url], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        assert _until(lambda: any(x.startswith("sweep:") for x in lines)), lines
        private_moto.stop()
        assert _until(lambda: any("sweep failed, retrying" in x for x in lines)), lines
        private_moto.start()
        rs = RunStore(store)
        now = time.time()
        rid = make_run(rs, now=now)
        fail(rs, rid, now, "nccl_error")
        assert _until(lambda: len(slack.posts) == 1), lines
        assert proc.poll() is None  # still watching
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert "nccl_error" in slack.posts[0]["body"]["text"]


def _until(pred, limit: float = 60.0) -> bool:
    """Poll for an event from another process (a bound on waiting, not a timing assertion)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_watch_and_ack_take_the_shared_store_options_and_their_env(s3_store, moto_server):
    """`ctl watch` and `ctl ack` declare --store/--endpoint-url/--store-region once (agent.protocol.options):
    the same names, the same env vars (TRAINCTL_STORE, TRAINCTL_S3_ENDPOINT, TRAINCTL_S3_REGION)."""
    from ops.alerts import ledger as L
    from tests.fixtures.moto_server import REGION

    for cmd in ("watch", "ack"):
        helptext = ctl([cmd, "--help"]).stdout
        for opt, env in (("--store", "TRAINCTL_STORE"), ("--endpoint-url", "TRAINCTL_S3_ENDPOINT"),
                         ("--store-region", "TRAINCTL_S3_REGION")):
            assert opt in helptext and env in helptext, (cmd, opt)
    rs = RunStore(s3_store)
    rid = make_run(rs, now=time.time())
    env = {**moto_server.env(), "TRAINCTL_STORE": s3_store.url, "TRAINCTL_S3_REGION": REGION}
    before = time.time()
    res = ctl(["ack", rid, "--for", "1h30m"], env)  # store, endpoint and region all from the environment
    after = time.time()
    assert res.returncode == 0, res.stderr
    assert "alerts muted until" in res.stdout
    assert before + 5400 <= L.load(rs, rid).ledger.snooze_until <= after + 5400
    watch = ctl(["watch", "--once", "--no-ec2", "--store-region", REGION], env)
    assert watch.returncode == 0, watch.stderr
    assert f"watching {s3_store.url}" in watch.stderr and "1 runs, 1 active" in watch.stderr
