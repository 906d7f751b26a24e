"""Delivery is honest (issue 13 item 7): `ctl watch --once` fails when an alert did not reach Slack,
a console print is never a Slack delivery, and plain http:// webhooks only go to loopback."""

from __future__ import annotations

import io
import time

import pytest

from agent.protocol.errors import ConfigError
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink, check_webhook_url
from ops.sweep import Watcher
from tests.ops.test_cli import ctl
from tests.ops.test_fakes import T0, fail, make_run


@pytest.mark.parametrize("status,body", [(404, "no_service"), (500, "error")])
def test_watch_once_exits_nonzero_when_an_alert_is_not_delivered(s3_store, slack, moto_server, status, body):
    rs = RunStore(s3_store)
    rid = make_run(rs, now=time.time())
    fail(rs, rid, time.time(), "host_oom")
    slack.fail_next(status, 5, body=body)
    env = {**moto_server.env(), "SLACK_WEBHOOK_URL": slack.webhook_url}
    args = ["watch", "--once", "--no-ec2", "--store", s3_store.url]
    res = ctl(args, env)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 alert(s) not delivered, still pending") and f"HTTP {status}" in last
    assert "Traceback" not in res.stderr and "testwebhooksecret0001" not in res.stderr + res.stdout
    led = L.load(rs, rid).ledger
    assert led.sent == [] and len(led.outbox) == 1
    # Slack answers again: the next cron run delivers it, once, and exits 0.
    slack.clear_failures()
    again = ctl(args, env)
    assert again.returncode == 0, again.stderr
    [post] = slack.posts
    assert "host_oom" in post["body"]["text"]
    assert L.load(rs, rid).ledger.outbox == []


def test_console_fallback_is_not_a_delivery_and_a_fixed_webhook_gets_it(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs)
    fail(rs, rid, T0 + 1, "disk_full")
    slack.fail_next(404, 1, body="no_service")
    out = io.StringIO()
    broken = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(out)), owner="a")
    rep = broken.sweep(T0 + 5)
    assert (rep.sent, rep.failed, rep.pending) == (0, 1, 1)
    rep = broken.sweep(T0 + 35)  # still pending, but printed only once
    assert rep.pending == 1 and out.getvalue().count("Training FAILED: disk_full") == 1
    fixed = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), owner="b")
    rep = fixed.sweep(T0 + 65)
    assert (rep.sent, rep.pending, rep.done) == (1, 0, 1)
    [post] = slack.posts
    assert "disk_full" in post["body"]["text"]
    [entry] = L.load(rs, rid).ledger.sent
    assert entry["via"] == "slack-webhook" and entry["attempts"] == 3


@pytest.mark.parametrize("url", ["https://hooks.slack.com/services/T/B/x", "http://127.0.0.1:9/x",
                                 "http://localhost:9/x", "http://[::1]:9/x"])
def test_https_and_loopback_http_webhooks_are_accepted(url):
    check_webhook_url(url)


@pytest.mark.parametrize("url", ["http://hooks.slack.com/services/T/B/x", "http://10.0.0.5/x", "hooks.slack.com/x",
                                 "ftp://127.0.0.1/x", "https://"])
def test_other_webhooks_are_refused(url):
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        check_webhook_url(url)


def test_watch_refuses_a_plain_http_webhook_in_one_line(tmp_path):
    res = ctl(["watch", "--once", "--no-ec2", "--store", str(tmp_path),
               "--slack-webhook", "http://hooks.slack.com/services/T000/B000/testwebhooksecret0001"])
    assert res.returncode == 2 and res.stderr.strip().startswith("Error: --slack-webhook must be an https:// URL")
    assert len(res.stderr.strip().splitlines()) == 1 and "testwebhooksecret0001" not in res.stderr
