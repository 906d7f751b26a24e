"""Bot-token mode (issue 14 item 2): a run's incident is one Slack message, updated in place
(chat.update) as it moves, with repeats, the resolve and the end in its thread."""

from __future__ import annotations

import io

from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.slack import ApiSink, ConsoleSink, Notifier, WebhookSink
from ops.sweep import Watcher
from tests.ops.test_fakes import T0, assert_no_secret, beat, complete, make_run

TOKEN = "xoxb-123456789012-abcdefghijkl"


def _head(body: dict) -> str:
    return body["text"].splitlines()[0]


def test_hung_repeat_resolved_completed_is_one_message_and_its_thread(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, progress_age=2000)
    w = Watcher(rs, Notifier(ApiSink(TOKEN, "#training", base_url=slack.api_url), ConsoleSink(io.StringIO())))
    w.sweep(T0)  # hung
    beat(rs, rid, T0 + 3695, progress_ts=T0 - 2000, seq=2)
    w.sweep(T0 + 3700)  # still hung an hour later: a repeat
    beat(rs, rid, T0 + 3800, progress_ts=T0 + 3790, step=200, seq=3)
    w.sweep(T0 + 3805)  # moving again: resolved
    complete(rs, rid, T0 + 3900)
    w.sweep(T0 + 3905)  # completed
    alert, repeat, resolved, done = (p["body"] for p in slack.posts)
    assert _head(alert) == "🧊 Training hung" and "thread_ts" not in alert
    ts = "1700000001.000100"  # the stand-in's first ts: every later post replies to it
    assert [b.get("thread_ts") for b in (repeat, resolved, done)] == [ts, ts, ts]
    assert _head(resolved).startswith("🟢 Resolved: training hung for")
    assert _head(done).startswith("✅ Training completed")
    edits = [u["body"] for u in slack.updates]
    assert [(e["ts"], e["channel"]) for e in edits] == [(ts, "#training")] * 3
    # The first post's header tells the current state at each step: the repeat's, resolved, completed.
    assert [_head(e) for e in edits] == [_head(repeat), _head(resolved), _head(done)]
    assert "hung" in _head(repeat).lower()
    led = L.load(rs, rid).ledger
    assert led.message == {"ts": ts, "channel": "#training"} and led.closed and led.outbox == []
    assert [e["kind"] for e in led.sent] == ["alert", "repeat", "resolved", "final"]
    assert_no_secret([p["body"] for p in slack.attempts])


def test_a_failed_edit_leaves_the_reply_delivered(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, hb_age=400)
    w = Watcher(rs, Notifier(ApiSink(TOKEN, "#training", base_url=slack.api_url), ConsoleSink(io.StringIO())))
    w.sweep(T0)
    slack.fail_next(500, 1, path="/api/chat.update")  # the edit fails, the reply went through
    beat(rs, rid, T0 + 1200, seq=9)
    rep = w.sweep(T0 + 1205)
    assert rep.pending == 0 and [_head(p["body"]).split(":")[0] for p in slack.posts] == ["🔇 Agent silent",
                                                                                          "🟢 Resolved"]
    assert [e["kind"] for e in L.load(rs, rid).ledger.sent] == ["alert", "resolved"]
    assert slack.updates == [] and rep.last_send_error == "chat.update: HTTP 500"


def test_webhook_mode_posts_as_before_and_edits_nothing(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, hb_age=400)
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())))
    w.sweep(T0)
    beat(rs, rid, T0 + 1200, seq=9)
    w.sweep(T0 + 1205)
    complete(rs, rid, T0 + 1300)
    w.sweep(T0 + 1305)
    assert len(slack.posts) == 3 and slack.updates == []
    assert all("thread_ts" not in p["body"] for p in slack.posts)
    assert L.load(rs, rid).ledger.message is None
