"""Idle GPU boxes against moto's EC2 and the Slack stand-in: a tagged running instance with no active
run alerts once (hourly cost, stop command); busy and untagged ones never. Time is passed in.

Each moto test uses a region of its own: moto's EC2 state is per region and the session server is
shared with other tests (terraform applies there create `ManagedBy=trainctl` instances too).
"""

from __future__ import annotations

import io
import threading

import pytest

from agent.protocol.runstore import RunStore
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.ec2 import TAG_KEY, TAG_VALUE, Ec2Enricher, TaggedInstance
from ops.orphans import report as O
from ops.state import Settings
from ops.sweep import Watcher
from tests.ops.test_fakes import SECRETS, T0, assert_no_secret, complete, make_run

AFTER = 1800.0
# moto does not check the AMI; describe_images(Owners=["amazon"]) would cost seconds per call


def launch(moto_server, region: str, n: int = 1, tagged: bool = True, itype: str = "g5.2xlarge") -> list[str]:
    ec2 = _regional(moto_server, region)
    tags = [{"ResourceType": "instance", "Tags": [{"Key": TAG_KEY, "Value": TAG_VALUE},
                                                  {"Key": "Name", "Value": "trainctl-gpu"}]}] if tagged else []
    res = ec2.run_instances(ImageId="ami-00000000000000001", InstanceType=itype, MinCount=n, MaxCount=n, TagSpecifications=tags)
    return [i["InstanceId"] for i in res["Instances"]]


def _regional(moto_server, region):
    import boto3

    return boto3.client("ec2", endpoint_url=moto_server.endpoint, region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def watcher(rs, slack, moto_server, region, owner=None, settings=Settings()):
    return Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), settings,
                   ec2=Ec2Enricher(moto_server.endpoint, default_region=region), owner=owner)


def orphan_posts(slack) -> list[dict]:
    return [p["body"] for p in slack.posts if p["body"]["text"].startswith("💸")]


def test_idle_tagged_instance_alerts_once_with_cost_and_stop_command(s3_store, slack, moto_server):
    region = "eu-west-1"
    [idle] = launch(moto_server, region)
    [untagged] = launch(moto_server, region, tagged=False)
    [busy] = launch(moto_server, region)
    rs = RunStore(s3_store)
    make_run(rs, "busy", instance_id=busy, region=region, hb_age=5)
    w = watcher(rs, slack, moto_server, region)
    rep = w.sweep(T0)
    assert rep.idle_instances == 1 and rep.errors == [] and orphan_posts(slack) == []
    assert w.ec2.tag_calls == 1
    w.sweep(T0 + AFTER - 1)
    assert orphan_posts(slack) == []  # not before the setting
    for i in range(8):
        w.sweep(T0 + AFTER + i * 60)
    for i in range(3):  # restarted watchers (new owner, new process state) send nothing again
        watcher(rs, slack, moto_server, region).sweep(T0 + 2 * AFTER + i)
    [body] = orphan_posts(slack)
    text = body["text"]
    assert text.splitlines()[0] == f"💸 Idle GPU instance {idle} ($1.21/h)"
    assert f"Instance: {idle} (g5.2xlarge, {region}) “trainctl-gpu”" in text
    assert "Reason: no active trainctl run on it for 30m 00s" in text
    assert "Hourly cost: $1.21/h (on-demand price table 2025-01)" in text
    assert "Idle so far: $0.61" in text  # 1800 s at $1.212/h
    assert f"aws ec2 stop-instances --instance-ids {idle} --region {region}" in text
    assert untagged not in text and busy not in text
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert "*Hourly cost:*\n$1.21/h (on-demand price table 2025-01)" in fields
    rec = O.OrphanRecord.from_bytes(rs.store.get(O.record_key(region, idle)))
    assert rec.alerted_at == T0 + AFTER and rec.idle_since == T0 and rec.lease is None
    assert {O.parse_key(k) for k in rs.store.list("_orphans/")} == {(region, idle)}  # busy one has none


def test_box_whose_run_finished_becomes_an_orphan_and_a_new_run_ends_the_stretch(s3_store, slack, moto_server):
    region = "eu-north-1"
    [iid] = launch(moto_server, region)
    rs = RunStore(s3_store)
    rid = make_run(rs, "first", instance_id=iid, region=region)
    w = watcher(rs, slack, moto_server, region)
    w.sweep(T0)
    complete(rs, rid, T0 + 10)
    w.sweep(T0 + 20)  # the completion message; the box is idle from here
    w.sweep(T0 + 20 + AFTER)
    assert len(orphan_posts(slack)) == 1
    make_run(rs, "second", instance_id=iid, region=region, now=T0 + 3 * AFTER, stamp="20270115-100000")
    w.sweep(T0 + 3 * AFTER)  # busy again: the stretch's record is gone
    assert list(rs.store.list("_orphans/")) == []
    assert len(orphan_posts(slack)) == 1


def test_stopped_box_is_forgotten_and_nothing_is_read_when_no_tagged_box_runs(s3_store, slack, moto_server):
    region = "ap-southeast-2"
    a, b = launch(moto_server, region, n=2)
    rs = RunStore(s3_store)
    w = watcher(rs, slack, moto_server, region)
    w.sweep(T0)
    w.sweep(T0 + AFTER)
    assert len(orphan_posts(slack)) == 2
    ec2 = _regional(moto_server, region)
    ec2.stop_instances(InstanceIds=[a])
    assert w.sweep(T0 + AFTER + 60).idle_instances == 1
    assert [O.parse_key(k) for k in rs.store.list("_orphans/")] == [(region, b)]
    ec2.stop_instances(InstanceIds=[b])
    assert w.sweep(T0 + AFTER + 120).idle_instances == 0
    assert len(orphan_posts(slack)) == 2


def test_undelivered_orphan_alert_goes_out_next_sweep_once(s3_store, slack, moto_server):
    region = "ca-central-1"
    [iid] = launch(moto_server, region)
    rs = RunStore(s3_store)
    w = watcher(rs, slack, moto_server, region)
    w.sweep(T0)
    slack.fail_next(500, 3)
    for i in range(3):
        assert w.sweep(T0 + AFTER + i).failed == 1
    assert orphan_posts(slack) == []
    w.sweep(T0 + AFTER + 10)
    w.sweep(T0 + AFTER + 20)
    assert len(orphan_posts(slack)) == 1
    rec = O.OrphanRecord.from_bytes(rs.store.get(O.record_key(region, iid)))
    assert rec.attempts == 4 and rec.last_error is None


def test_two_watchers_sweeping_concurrently_send_one(s3_store, slack, moto_server):
    region = "sa-east-1"
    launch(moto_server, region, n=3)
    rs = RunStore(s3_store)
    ws = [watcher(rs, slack, moto_server, region, owner=o) for o in ("watcher-a", "watcher-b")]
    barrier, errors = threading.Barrier(2), []

    def run(w):
        try:
            barrier.wait()
            for i in range(6):
                w.sweep(T0 + i * AFTER / 2)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in ws]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(orphan_posts(slack)) == 3


def test_orphan_scan_off_and_ec2_outage(s3_store, slack, moto_server, private_moto):
    region = "us-west-1"
    launch(moto_server, region)
    rs = RunStore(s3_store)
    off = watcher(rs, slack, moto_server, region, settings=Settings(orphan_after_s=None))
    off.sweep(T0)
    off.sweep(T0 + 10 * AFTER)
    assert off.ec2.tag_calls == 0 and orphan_posts(slack) == []
    private_moto.stop()
    down = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())),
                   ec2=Ec2Enricher(private_moto.endpoint, default_region=region, clients={region: _fast(private_moto)}))
    rep = down.sweep(T0)
    assert any("orphan scan: EC2 describe_instances in us-west-1 failed" in e for e in rep.errors)
    assert not any("orphan scan" in e for e in down.sweep(T0 + 30).errors)  # said once, not every sweep


def _fast(server):
    import boto3
    from botocore.config import Config

    return boto3.client("ec2", region_name="us-west-1", endpoint_url=server.endpoint,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1))


# -- pure decisions -------------------------------------------------------------------------------
INST = TaggedInstance("i-0123456789abcdef0", "us-east-1", "g5.xlarge", launch_time=T0 - 5000)


@pytest.mark.parametrize("rec,now,owner,expect", [
    (None, T0, "a", O.START),
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, launch_time=T0 - 5000), T0 + AFTER - 1, "a", O.WAIT),
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, launch_time=T0 - 5000), T0 + AFTER, "a", O.CLAIM),
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, launch_time=T0 - 9), T0 + AFTER, "a", O.START),  # rebooted
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, alerted_at=T0 + AFTER), T0 + 9 * AFTER, "a", O.WAIT),
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, lease={"owner": "b", "until": T0 + AFTER + 60}),
     T0 + AFTER, "a", O.WAIT),
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, lease={"owner": "b", "until": T0 + AFTER - 1}),
     T0 + AFTER, "a", O.CLAIM),  # an expired lease is taken over
    (O.OrphanRecord(INST.instance_id, "us-east-1", T0, lease={"owner": "a", "until": T0 + AFTER + 60}),
     T0 + AFTER, "a", O.CLAIM),
])
def test_decide(rec, now, owner, expect):
    action, new = O.decide(rec, INST, now, AFTER, owner, 120.0)
    assert action == expect
    if action == O.START:
        assert new.idle_since == now and new.launch_time == INST.launch_time
    if action == O.CLAIM:
        assert new.lease == {"owner": owner, "until": now + 120.0}


def test_message_for_unknown_type_and_record_keys():
    rec = O.OrphanRecord("i-0abc", "eu-west-1", T0, instance_type="x9.huge", name=f"box {SECRETS[2]}")
    m = O.build_message(rec, T0 + 3600)
    assert_no_secret([m.text, m.blocks])
    assert m.header == "💸 Idle GPU instance i-0abc"
    assert m.fields["Hourly cost"] == "unknown (no price for this type)" and m.fields["Idle so far"] == "-"
    assert "aws ec2 stop-instances --instance-ids i-0abc --region eu-west-1" in m.text
    assert O.parse_key(O.record_key("eu-west-1", "i-0abc")) == ("eu-west-1", "i-0abc")
    assert O.parse_key("_orphans/junk") is None and O.parse_key("_index/done/x") is None


def test_scan_tag_is_the_one_the_infra_module_puts_on_the_instance():
    import re
    from pathlib import Path

    tf = (Path(__file__).resolve().parents[2] / "infra" / "terraform" / "versions.tf").read_text()
    default_tags = tf[tf.index("default_tags"):]
    assert re.search(rf'\b{TAG_KEY}\s*=\s*"{TAG_VALUE}"', default_tags), "ops.ec2.TAG_KEY/VALUE drifted from infra"


def test_lambda_handler_reports_an_idle_box_once(s3_store, slack, moto_server, monkeypatch):
    from ops.lambda_handler import handler

    region = "ap-northeast-1"
    [iid] = launch(moto_server, region)
    for k, v in {"TRAINCTL_STORE": s3_store.url, "TRAINCTL_S3_ENDPOINT": moto_server.endpoint,
                 "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint, "SLACK_WEBHOOK_URL": slack.webhook_url,
                 "AWS_REGION": region, "TRAINCTL_ORPHAN_AFTER": "10m"}.items():
        monkeypatch.setenv(k, v)
    assert handler({"now": T0}, None)["idle_instances"] == 1
    assert handler({"now": T0 + 599}, None)["sent"] == 0
    assert handler({"now": T0 + 600}, None)["sent"] == 1
    assert handler({"now": T0 + 1200}, None)["sent"] == 0
    [body] = orphan_posts(slack)
    assert f"--instance-ids {iid} --region {region}" in body["text"]
