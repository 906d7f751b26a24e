"""The loss-curve PNG in the final alert's thread (issue 15 item 1, bot-token mode): real sweeps
over a real store, the PNG drawn by the project's own plot code, Slack's upload flow
(files.getUploadURLExternal, the byte POST, files.completeUploadExternal) against the stand-in."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from agent.protocol import plots
from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops import index
from ops.alerts import ledger as L
from ops.alerts import upload as U
from ops.alerts.slack import ApiSink, ConsoleSink, Notifier, WebhookSink
from ops.sweep import Watcher
from tests.fixtures.slack import UPLOAD_PATH
from tests.ops.test_fakes import SECRETS, T0, assert_no_secret, complete, fail, make_run

TOKEN = "xoxb-123456789012-abcdefghijkl"
GET_URL = "/api/files.getUploadURLExternal"
FILE_PATHS = (GET_URL, "/api/files.completeUploadExternal")

pytestmark = pytest.mark.skipif(not plots.available(), reason="needs the plots extra (matplotlib)")


@pytest.fixture(params=["local", "s3"])
def rs(request):
    """The same tests over a local-folder store and moto's S3 server."""
    return RunStore(request.getfixturevalue("local_store" if request.param == "local" else "s3_store"))


def finished_run(rs: RunStore, end: str = "complete", curve: bool = True) -> tuple[str, bytes | None]:
    """A run that logged 40 steps and ended (`complete` or `fail`), its PNG stored as the agent stores it."""
    rid = make_run(rs, now=T0 - 60)
    history = [{"step": s, "loss": 2.0 / (1 + s / 10), "lr": 1e-4 * (1 - s / 50), "ts": T0 - 400 + s}
               for s in range(1, 41)]
    rs.write_history(rid, history)
    png = plots.loss_curve_png(history) if curve else None
    if png is not None:
        rs.store.put(rs.k(rid, p.LOSS_CURVE), png)
    (complete if end == "complete" else fail)(rs, rid, T0 - 5)
    return rid, png


def bot_watcher(rs: RunStore, slack, owner: str | None = None) -> Watcher:
    return Watcher(rs, Notifier(ApiSink(TOKEN, "#training", base_url=slack.api_url), ConsoleSink(io.StringIO())),
                   owner=owner)


def file_calls(slack) -> list[str]:
    return [a["path"] for a in slack.attempts if a["path"] in FILE_PATHS or a["path"].startswith(UPLOAD_PATH)]


def test_completion_alert_then_one_upload_of_the_stored_png_in_its_thread(rs, slack, caplog):
    caplog.set_level(logging.DEBUG)  # slack_sdk's own debug lines too: none may carry the token
    rid, png = finished_run(rs)
    w = bot_watcher(rs, slack)
    rep = w.sweep(T0)
    assert rep.sent == 1 and rep.done == 1 and [p_["path"] for p_ in slack.posts] == ["/api/chat.postMessage"]
    alert = slack.posts[0]["body"]
    assert alert["text"].startswith("✅ Training completed")
    (up,) = slack.uploads
    assert up["bytes"] == png == rs.store.get(rs.k(rid, p.LOSS_CURVE))
    ts = "1700000001.000100"  # the stand-in's first ts: the alert itself
    assert (up["thread_ts"], up["channel_id"]) == (ts, "#training")
    assert slack.upload_urls[0]["filename"] == "loss_curve.png" and int(slack.upload_urls[0]["length"]) == len(png)
    for later in (T0 + 60, T0 + 120):
        w.sweep(later)
        bot_watcher(rs, slack).sweep(later)  # another watcher too: the run is done for both
    assert len(slack.uploads) == 1 and len(slack.posts) == 1
    assert file_calls(slack) == [GET_URL, UPLOAD_PATH + up["file_id"], FILE_PATHS[1]]
    led = L.load(rs, rid).ledger
    assert led.upload["pending"] is False and led.upload["file_id"] == up["file_id"] and led.upload["attempts"] == 1
    assert rid in index.done_runs(rs) and led.finished
    assert TOKEN not in caplog.text and TOKEN.encode() not in led.to_bytes()
    assert_no_secret([a["body"] for a in slack.attempts])


def test_two_watchers_racing_post_and_upload_once(rs, slack):
    rid, png = finished_run(rs, end="fail")
    watchers = [bot_watcher(rs, slack, owner=f"w{i}") for i in range(3)]
    start = threading.Barrier(len(watchers))
    reports = []

    def go(w):
        start.wait()
        reports.append(w.sweep(T0))

    threads = [threading.Thread(target=go, args=(w,)) for w in watchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whoever won, and whatever a loser saw (a lease, or the run already done): one alert, one picture.
    for w in watchers:
        w.sweep(T0 + 300)  # past every lease: anything left pending would go out now
    assert len(slack.posts) == 1 and slack.posts[0]["body"]["text"].startswith("🔥 Training FAILED")
    (up,) = slack.uploads
    assert up["bytes"] == png and up["thread_ts"] == "1700000001.000100"
    assert sum(r.sent for r in reports) == 1


@pytest.mark.parametrize("refused", ["url", "bytes"])
def test_a_refused_upload_is_retried_next_sweep_and_the_alert_is_not_resent(rs, slack, caplog, refused):
    rid, png = finished_run(rs, end="fail")
    # Refuse step 1 (files.getUploadURLExternal) or step 2 (the byte POST to the first upload_url).
    slack.fail_next(500, 1, path=GET_URL if refused == "url" else UPLOAD_PATH + "F00000001")
    w = bot_watcher(rs, slack)
    rep = w.sweep(T0)
    assert rep.sent == 1 and rep.failed == 0 and rep.pending == 0  # the alert went out, untouched
    assert slack.uploads == [] and rep.done == 0  # the run stays active for the retry
    led = L.load(rs, rid).ledger
    assert led.upload["pending"] is True and led.upload["attempts"] == 1 and led.upload["lease"] is None
    assert "loss curve not uploaded" in caplog.text and "will retry" in caplog.text
    rep = w.sweep(T0 + 60)
    (up,) = slack.uploads
    assert up["bytes"] == png and up["thread_ts"] == "1700000001.000100"
    assert rep.sent == 0 and len(slack.posts) == 1 and rep.done == 1
    w.sweep(T0 + 120)
    assert len(slack.uploads) == 1 and len(slack.posts) == 1
    led = L.load(rs, rid).ledger
    assert led.upload["pending"] is False and led.upload["attempts"] == 2 and led.upload["last_error"] is None
    for s in SECRETS:
        assert s not in caplog.text


def test_an_upload_slack_keeps_refusing_is_given_up_after_a_bounded_number_of_sweeps(local_store, slack, caplog):
    rs = RunStore(local_store)
    rid, _ = finished_run(rs)
    slack.fail_next(500, U.MAX_ATTEMPTS + 5, path=GET_URL)
    w = bot_watcher(rs, slack)
    done = [w.sweep(T0 + 60 * i).done for i in range(U.MAX_ATTEMPTS)]
    assert done == [0] * (U.MAX_ATTEMPTS - 1) + [1]  # then the run leaves the active set
    calls = len(file_calls(slack))
    w.sweep(T0 + 60 * U.MAX_ATTEMPTS)
    assert calls == U.MAX_ATTEMPTS == len(file_calls(slack)) and slack.uploads == []
    led = L.load(rs, rid).ledger
    assert led.upload["pending"] is False and led.upload["gave_up"] and "HTTP 500" in led.upload["last_error"]
    assert len(slack.posts) == 1 and "gave up" in caplog.text and TOKEN not in caplog.text


def test_webhook_mode_links_the_curve_and_uploads_nothing(local_store, slack):
    rs = RunStore(local_store)
    rid, _ = finished_run(rs)
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())))
    assert w.sweep(T0).done == 1
    (post,) = slack.posts
    assert f"Loss curve: {rs.location(rid, p.LOSS_CURVE)}" in post["body"]["text"]
    assert file_calls(slack) == [] and L.load(rs, rid).ledger.upload is None


def test_bot_mode_without_a_curve_uploads_nothing(local_store, slack):
    rs = RunStore(local_store)
    rid, _ = finished_run(rs, curve=False)
    assert bot_watcher(rs, slack).sweep(T0).done == 1
    assert len(slack.posts) == 1 and file_calls(slack) == [] and L.load(rs, rid).ledger.upload is None


def test_a_bot_without_files_write_gives_up_at_once_and_keeps_its_alerts(local_store, slack, caplog):
    rs = RunStore(local_store)
    rid, _ = finished_run(rs)
    slack.fail_next(200, 1, body='{"ok": false, "error": "missing_scope"}', path=GET_URL)
    w = bot_watcher(rs, slack)
    rep = w.sweep(T0)
    assert rep.sent == 1 and rep.done == 1 and slack.uploads == []
    w.sweep(T0 + 60)
    assert file_calls(slack) == [GET_URL] and len(slack.posts) == 1
    up = L.load(rs, rid).ledger.upload
    assert up["pending"] is False and up["attempts"] == 1 and "missing_scope" in up["last_error"]
    assert w.notifier.broken is None  # alerts still go to Slack: only the picture is refused
    assert "gave up" in caplog.text and TOKEN not in caplog.text
