"""Spot-interrupted runs (their own state, the resume command) and run cost in the final messages,
on Slack and on the terminal. Fake runs through RunStore; time passed in."""

from __future__ import annotations

import io

import pytest

from agent.protocol import records as p
from agent.protocol.causes import REMEDIATION
from agent.protocol.runstore import RunStore
from ops import index
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.config import settings_from, settings_from_env
from ops.ec2 import Ec2Enricher
from ops.state import INTERRUPTED, InstanceInfo, RunFacts, Settings, assess
from ops.sweep import Watcher
from tests.ops.test_fakes import T0, fail, make_run
from tests.ops.test_message import parts

SPOT_SUMMARY = "spot interruption notice (instance-action stop); checkpoint-420 uploaded"


def _error(summary="agent received SIGTERM and stopped the trainer", last_step=420):
    return p.ErrorMarker(ts=T0, cause="interrupted", remediation=REMEDIATION["interrupted"], summary=summary,
                         phase="training", duration_s=2700.0, last_step=last_step)


@pytest.mark.parametrize("error,instance,reason", [
    (_error(SPOT_SUMMARY), None, "interrupted by a spot reclaim at step 420"),
    (_error(), InstanceInfo("i-0abc", "running", spot=True), "interrupted by a spot reclaim at step 420"),
    (_error(), InstanceInfo("i-0abc", "stopped", reason_code="Server.SpotInstanceTermination"),
     "interrupted by a spot reclaim at step 420"),
    (_error(last_step=None), None, "interrupted before the first step (the agent was told to shut down: "
                                   "spot reclaim, reboot or systemctl stop)"),
    (_error(), InstanceInfo("i-0abc", "running"), "interrupted at step 420 (the agent was told to shut down: "
                                                  "spot reclaim, reboot or systemctl stop)"),
])
def test_assess_interrupted(error, instance, reason):
    st = assess(RunFacts("r-20270101-000000", has_error=True, error=error, instance=instance), T0 + 5)
    assert (st.state, st.reason, st.since, st.cause) == (INTERRUPTED, reason, T0, "interrupted")


def test_interrupted_and_complete_is_still_corrupt():
    f = RunFacts("r-20270101-000000", has_error=True, error=_error(), has_complete=True,
                 complete=p.CompleteMarker(ts=T0, duration_s=1.0))
    assert assess(f, T0).state == "corrupt"


def watcher(rs, slack, console=None, ec2=None):
    return Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(console or io.StringIO())),
                   Settings(orphan_after_s=None), ec2=ec2)


def test_spot_interrupted_run_alert_says_so_with_resume_command_and_cost(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id="i-0abc1234def567890")
    fail(rs, rid, T0 + 1, "interrupted", summary=SPOT_SUMMARY)
    w = watcher(rs, slack)
    for i in range(5):
        w.sweep(T0 + 2 + i * 30)
    [post] = slack.posts
    header, fields, blocks = parts(post)
    assert header == "⏸️ Run interrupted by a spot reclaim"
    assert fields["Status"] == "INTERRUPTED"
    assert fields["Reason"] == "interrupted by a spot reclaim at step 420"
    assert fields["Cost"] == "$0.91 (g5.2xlarge, 45m 00s at $1.21/h)"
    action = blocks["action"]["text"]["text"]
    assert f"`ctl launch --existing <new-instance> --resume {rid}` (it continues at step 420)" in action
    assert index.done_runs(rs) == {rid}
    assert rs.store.get_json(p.INDEX_DONE + rid)["state"] == "interrupted"


def test_ec2_tells_a_plain_sigterm_on_a_spot_box_apart(s3_store, slack, moto_server):
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint, region_name="eu-central-1")
    [inst] = ec2.run_instances(ImageId="ami-00000000000000001", InstanceType="g5.xlarge", MinCount=1, MaxCount=1,
                               InstanceMarketOptions={"MarketType": "spot"})["Instances"]
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id=inst["InstanceId"], region="eu-central-1")
    w = watcher(rs, slack, ec2=Ec2Enricher(moto_server.endpoint, default_region="eu-central-1"))
    w.sweep(T0)  # healthy: the ledger caches the instance id
    fail(rs, rid, T0 + 1, "interrupted", summary="agent received SIGTERM and stopped the trainer")
    w.sweep(T0 + 2)
    [post] = slack.posts
    assert "Reason: interrupted by a spot reclaim at step 420" in post["body"]["text"]


def test_completed_without_agent_cost_is_priced_from_type_and_duration(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id="i-0abc1234def567890")
    rs.write_complete(rid, p.CompleteMarker(ts=T0 + 1, duration_s=7260.0, final_metrics={"loss": 0.5}))
    out = io.StringIO()
    watcher(rs, slack, console=out).sweep(T0 + 2)
    _, fields, _ = parts(slack.posts[0])
    assert fields["Cost"] == "$2.44 (g5.2xlarge, 2h 01m at $1.21/h)"  # 7260 s at $1.212/h


def test_terminal_alert_prints_the_cost(tmp_path, monkeypatch):
    from agent.protocol.stores import open_store

    monkeypatch.setenv("TRAINCTL_PRICE_G5_2XLARGE", "2.00")  # the documented override
    rs = RunStore(open_store(str(tmp_path / "runs")))
    rid = make_run(rs, instance_id="i-0abc1234def567890")
    fail(rs, rid, T0 + 1, "cuda_oom")
    out = io.StringIO()
    Watcher(rs, Notifier(None, ConsoleSink(out)), Settings(orphan_after_s=None)).sweep(T0 + 2)
    assert "Cost: $1.50 (g5.2xlarge, 45m 00s at $2.00/h)" in out.getvalue()


def test_no_cost_line_without_an_instance_type(s3_store, slack):
    rs = RunStore(s3_store)
    rid = make_run(rs)  # a local run: no instance type, no price
    fail(rs, rid, T0 + 1, "nan_loss")
    watcher(rs, slack).sweep(T0 + 2)
    assert "Cost" not in parts(slack.posts[0])[1]


def test_orphan_after_setting_forms():
    assert settings_from({"orphan_after_s": "45m"}).orphan_after_s == 2700
    assert settings_from({"orphan_after_s": "never"}).orphan_after_s is None
    assert Settings().orphan_after_s == 1800 and Settings().scaled(0.5).orphan_after_s == 900
    assert settings_from_env({"TRAINCTL_ORPHAN_AFTER": "off"}).orphan_after_s is None
    with pytest.raises(Exception, match="TRAINCTL_ORPHAN_AFTER: cannot read 'soon' as a duration"):
        settings_from_env({"TRAINCTL_ORPHAN_AFTER": "soon"})


def test_ctl_runs_shows_cost_in_table_and_json(tmp_path):
    import json
    import time

    from click.testing import CliRunner

    from agent.protocol.stores import open_store
    from trainctl.cli import main

    now = time.time()
    rs = RunStore(open_store(str(tmp_path / "runs")))

    def run(name, **md):
        rid = f"{name}-20270115-080000"
        rs.write_metadata(p.Metadata(run_id=rid, created=md.pop("created", now - 1800), **md))
        return rid

    agent_cost = run("agentcost", instance_type="g5.2xlarge")
    rs.write_complete(agent_cost, p.CompleteMarker(ts=now, duration_s=100.0, cost_usd=2.42))
    priced = run("priced", instance_type="g5.2xlarge")
    rs.write_complete(priced, p.CompleteMarker(ts=now, duration_s=3600.0))
    failed = run("failed", instance_type="g5.xlarge")
    rs.write_error(failed, _error())  # 2700 s at $1.006/h
    running = run("running", instance_type="g5.2xlarge", created=now - 1800)  # so far, at least 1800 s
    local = run("local")
    r = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "runs"), "--json"])
    assert r.exit_code == 0, r.output
    cost = {row["run_id"]: row["cost_usd"] for row in json.loads(r.output)}
    assert cost[agent_cost] == 2.42 and cost[priced] == 1.21 and cost[failed] == 0.75
    assert 0.61 <= cost[running] <= 0.62 and cost[local] is None
    r = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "cost" in r.output
    line = next(x for x in r.output.splitlines() if priced[:8] in x)
    assert "$1.21" in line
