"""The Slack payload, field by field, for every cause and watcher state, as posted to the stand-in."""

from __future__ import annotations

import io

import pytest

from agent.protocol.causes import REMEDIATION
from agent.protocol.runstore import RunStore
from ops.alerts.message import LOG_CHARS
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.state import InstanceInfo
from ops.sweep import Watcher
from tests.ops.test_fakes import SECRET_LINES, SECRETS, T0, assert_no_secret, beat, complete, fail, make_run

CAUSES = [c for c in REMEDIATION if c != "interrupted"]  # interrupted has its own state: test_ops_orphans


def sweep_once(rs, slack, now, console=None):
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(console or io.StringIO())))
    return w.sweep(now)


def parts(post: dict) -> tuple[str, dict[str, str], dict[str, dict]]:
    """(header, {field: value}, {block type or section role: block}) of a webhook post."""
    blocks = post["body"]["blocks"]
    assert blocks[0]["type"] == "header"
    fields = {}
    for f in blocks[1]["fields"]:
        key, _, value = f["text"].partition(":*\n")
        fields[key.strip("*")] = value
    by_role = {}
    for b in blocks[2:]:
        text = (b.get("text") or {}).get("text", "")
        role = ("action" if "Action required" in text else "log" if "Last log lines" in text else b["type"])
        by_role[role] = b
    return blocks[0]["text"]["text"], fields, by_role


@pytest.mark.parametrize("cause", CAUSES)
def test_failure_payload_for_each_cause(s3_store, slack, cause):
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id="i-0abc1234def567890")
    summary = f"{cause}: details {SECRETS[0]}"
    fail(rs, rid, T0 + 1, cause, summary=summary, log_tail=SECRET_LINES + [f"last line for {cause}"])
    sweep_once(rs, slack, T0 + 2)
    [post] = slack.posts
    header, fields, blocks = parts(post)
    state = "stopped_by_user" if cause == "stopped_by_user" else "failed"
    assert header == ("🛑 Stopped by user" if state == "stopped_by_user" else f"🔥 Training FAILED: {cause}")
    assert fields["Run ID"] == f"`{rid}`"
    assert fields["Status"] == state.upper().replace("_", " ")
    assert fields["Reason"] == f"{cause}: details [REDACTED]"
    assert fields["Instance"] == "i-0abc1234def567890"
    assert fields["Phase"] == "training"
    assert fields["Duration"] == "45m 00s"
    assert fields["Step/Loss"] == "step 100/1000, loss 1.2345"
    assert fields["Cost"] == "$0.91 (g5.2xlarge, 45m 00s at $1.21/h)"  # 2700 s at $1.212/h
    assert blocks["action"]["text"]["text"] == f"🔧 *Action required:* {REMEDIATION[cause]}"
    log = blocks["log"]["text"]["text"]
    assert f"last line for {cause}" in log and log.count("[REDACTED]") == 4
    [button] = blocks["actions"]["elements"]
    assert button["url"].startswith(f"https://s3.console.aws.amazon.com/s3/buckets/{s3_store.bucket}?")
    assert f"prefix=training-runs/{rid}/" in button["url"]
    assert f"ctl tail {rid} --store {s3_store.url}" in blocks["context"]["elements"][0]["text"]
    text = post["body"]["text"]
    assert text.splitlines()[0] == header and f"Run ID: `{rid}`" in text and REMEDIATION[cause] in text
    assert_no_secret(post["body"])


def test_completed_payload_has_duration_loss_and_artifacts(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs)
    complete(rs, rid, T0 + 1, loss=0.8765)
    sweep_once(rs, slack, T0 + 2)
    header, fields, blocks = parts(slack.posts[0])
    assert header == "✅ Training completed"
    assert fields["Status"] == "COMPLETED" and fields["Duration"] == "2h 01m"
    assert fields["Step/Loss"] == "final loss 0.8765"
    assert fields["Artifacts"] == f"{s3_store.url}/{rid}/artifacts/adapter/"
    assert fields["Cost"] == "$2.42"
    assert "action" not in blocks


def test_completed_alert_says_phase_completed_although_the_last_progress_said_saving(s3_store, slack):
    """The marker decides the phase: the trainer's last progress line and the metadata (written
    before the agent's final update) still say `saving` when `_complete` lands."""
    rs = RunStore(s3_store)
    rid = make_run(rs, phase="saving")
    complete(rs, rid, T0 + 1)
    sweep_once(rs, slack, T0 + 2)
    header, fields, _ = parts(slack.posts[0])
    assert header == "✅ Training completed"
    assert fields["Phase"] == "completed" and fields["Status"] == "COMPLETED"
    assert "Phase: completed" in slack.posts[0]["body"]["text"] and "saving" not in slack.posts[0]["body"]["text"]


def test_failed_alert_keeps_the_phase_the_run_failed_in(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, phase="training")
    fail(rs, rid, T0 + 1, "cuda_oom", phase="evaluating")
    sweep_once(rs, slack, T0 + 2)
    _, fields, _ = parts(slack.posts[0])
    assert fields["Phase"] == "evaluating"


def test_hung_payload_names_py_spy_and_the_trainer_pid(s3_store, slack):
    rs = RunStore(s3_store)
    make_run(rs, progress_age=2000, log=["step 100 loss 1.23", f"token={SECRETS[2]}"])
    sweep_once(rs, slack, T0)
    header, fields, blocks = parts(slack.posts[0])
    assert header == "🧊 Training hung"
    assert fields["Status"] == "HUNG" and fields["Reason"].startswith("no training progress for 33m ")
    assert "py-spy dump --pid 31337" in blocks["action"]["text"]["text"]
    assert "nvidia-smi" in blocks["action"]["text"]["text"]
    assert "step 100 loss 1.23" in blocks["log"]["text"]["text"]
    assert_no_secret(slack.posts[0]["body"])


def test_silent_then_resolved_payloads(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, hb_age=400)
    sweep_once(rs, slack, T0)
    beat(rs, rid, T0 + 1200, seq=9)
    sweep_once(rs, slack, T0 + 1205)
    (h1, f1, b1), (h2, f2, b2) = (parts(p) for p in slack.posts)
    assert h1 == "🔇 Agent silent" and f1["Reason"].startswith("no heartbeat for 6m 40s")
    assert f"ctl status {rid}" in b1["action"]["text"]["text"]
    assert h2 == "🟢 Resolved: agent silent for 25m 15s"
    assert f2["Status"] == "HEALTHY" and f2["Reason"].startswith("recovered after 25m 15s")
    assert "action" not in b2


def test_corrupt_run_payload(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs)
    complete(rs, rid, T0 + 1)
    rs.store.put_if_absent(rs.k(rid, "_error"), rs.read_complete(rid).to_bytes())  # a buggy writer
    sweep_once(rs, slack, T0 + 2)
    header, fields, blocks = parts(slack.posts[0])
    assert header == "⚠️ Run corrupt (both markers)" and fields["Status"] == "CORRUPT"
    assert "unverified" in blocks["action"]["text"]["text"]


def test_long_log_is_capped_and_blocks_stay_in_limits(local_store):
    from ops.alerts.message import MessageFacts, build

    mf = MessageFacts("r-20270101-000000", log_tail=["x" * 500] * 40, store_url="file:///tmp/s")
    msg = {"id": "0001-alert", "kind": "alert", "state": "hung", "reason": "y" * 5000, "created": T0,
           "cause": None}
    m = build(msg, mf)
    log_block = next(b for b in m.blocks if "Last log lines" in b.get("text", {}).get("text", ""))
    assert len(log_block["text"]["text"]) <= LOG_CHARS + 30
    assert all(len(f["text"]) <= 2000 for f in m.blocks[1]["fields"])
    assert not any(b["type"] == "actions" for b in m.blocks)  # no console link for a local store


def test_instance_gone_payload_from_facts():
    from ops.alerts.message import MessageFacts, build

    inst = InstanceInfo("i-0abc", "stopped", reason_code="Server.SpotInstanceTermination", transition_at=T0)
    mf = MessageFacts("r-20270101-000000", instance=inst)
    m = build({"id": "1", "kind": "alert", "state": "instance_gone", "reason": inst.describe(), "created": T0,
               "cause": None}, mf)
    assert m.header == "💀 Instance gone"
    assert m.fields["Reason"] == "instance i-0abc was stopped by spot interruption at 08:00 UTC"
    assert m.fields["Instance"] == "i-0abc (stopped)"
    assert "Spot capacity was reclaimed" in m.text


def test_hung_by_cadence_payload_shows_the_evidence_and_folded_bar_frames(s3_store, slack):
    """Issue 12: the hung alert says what the heartbeat showed, and a tqdm bar reads as its last frame."""
    from agent.protocol import records as p

    rs = RunStore(s3_store)
    bar = "".join(f"\r {i}/30 [00:{i:02d}<00:10, 1.11it/s]" for i in range(1, 13))
    rid = make_run(rs, log=["loading model", bar.lstrip("\r"), "still here"])
    ts = T0 - 5
    rs.write_heartbeat(rid, p.Heartbeat(
        ts=ts, seq=3, agent_pid=4242, trainer_alive=True, trainer_pid=31337, phase="training", last_step=12,
        last_progress_ts=ts - 120, progress_source="output", last_log_ts=ts - 110,
        gpus=[{"index": 0, "util_percent": 0}],
        cadence={"step_p50_s": 9.8, "hung_after_s": 60.0, "learned": True, "last_step_ts": ts - 120,
                 "phase": "training", "phase_since": None, "eval_allowance_s": 600.0, "save_allowance_s": 300.0}))
    sweep_once(rs, slack, T0)
    header, fields, blocks = parts(slack.posts[0])
    assert header == "🧊 Training hung"
    assert fields["Reason"].startswith("no training progress for 2m 00s (step 12, phase training; hung after "
                                       "1m 00s from the run's own cadence)")
    assert fields["Evidence"] == ("steps every 9.8s, last step 2m 00s ago, hung after 1m 00s, last log line "
                                  "1m 50s ago, GPU util 0% (heartbeat)")
    log = blocks["log"]["text"]["text"]
    assert "loading model\n 12/30 [00:12<00:10, 1.11it/s]\nstill here" in log and "11/30" not in log
    assert "Evidence: steps every 9.8s" in slack.posts[0]["body"]["text"]


def test_silent_script_without_progress_source_alerts_with_the_log_silence_reason(local_store):
    """`ctl watch --log-silence`: a script whose progress is not recognised is judged by its log's silence."""
    import time

    from agent.protocol import records as p
    from tests.ops.test_cli import ctl

    rs = RunStore(local_store)
    now = time.time()
    rid = make_run(rs, now=now, created_ago=7200, step=None, phase="running")
    rs.write_heartbeat(rid, p.Heartbeat(ts=now - 2, seq=3, agent_pid=4242, trainer_alive=True, phase=None,
                                        progress_source=None, last_log_ts=now - 200))
    quiet = ctl(["watch", "--once", "--no-ec2", "--store", local_store.url, "--log-silence", "5m"])
    assert quiet.returncode == 0 and "Training hung" not in quiet.stdout, quiet.stdout  # 2 h, but its log is alive
    res = ctl(["watch", "--once", "--no-ec2", "--store", local_store.url, "--log-silence", "3m"])
    assert res.returncode == 0, res.stderr
    assert "🧊 Training hung" in res.stdout and rid in res.stdout
    assert "Reason: no log output for 3m 1" in res.stdout and "while the agent is alive" in res.stdout
    assert "Evidence: no progress source recognised, silent after 3m 00s, last log line 3m 1" in res.stdout
    bad = ctl(["watch", "--once", "--no-ec2", "--store", local_store.url, "--log-silence", "0"])
    assert bad.returncode == 2 and "--log-silence must be positive" in bad.stderr


def test_the_lambda_reads_the_log_silence_setting():
    from ops.config import settings_from_env

    assert settings_from_env({"TRAINCTL_LOG_SILENCE": "20m"}).log_silence_s == 1200.0
    assert settings_from_env({}).log_silence_s == 900.0
    assert settings_from_env({"TRAINCTL_LOG_SILENCE": "20m"}).scaled(0.5).log_silence_s == 600.0
