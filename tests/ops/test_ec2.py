"""EC2 enrichment against moto: a stopped instance turns "agent silent" into "instance ... was stopped"."""

from __future__ import annotations

import io
import time

import pytest

from agent.protocol.runstore import RunStore
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.ec2 import Ec2Enricher, transition_time
from ops.sweep import Watcher
from tests.ops.test_fakes import T0, beat, make_run


@pytest.fixture
def ec2(moto_server):
    return moto_server.client("ec2")


def launch(ec2, n=1) -> list[str]:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    res = ec2.run_instances(ImageId=image, InstanceType="g5.2xlarge", MinCount=n, MaxCount=n)
    return [i["InstanceId"] for i in res["Instances"]]


def test_stopped_instance_explains_the_silence(s3_store, slack, moto_server, ec2):
    [iid] = launch(ec2)
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id=iid, region="us-east-1")
    enricher = Ec2Enricher(moto_server.endpoint)
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), ec2=enricher)
    assert w.sweep(T0).states["healthy"] == 1 and slack.posts == []
    ec2.stop_instances(InstanceIds=[iid])
    beat(rs, rid, T0 - 300)  # and the agent went quiet with it
    rep = w.sweep(T0 + 30)
    assert rep.states["instance_gone"] == 1 and rep.errors == []
    [post] = slack.posts
    text = post["body"]["text"]
    assert text.splitlines()[0] == "💀 Instance gone"
    assert f"Reason: instance {iid} was stopped by a user (API or console) at " in text
    assert f"Instance: {iid} (stopped)" in text
    assert f"aws ec2 start-instances --instance-ids {iid}" in text
    # inhibition: the agent stays silent, but no agent_silent alert follows
    for i in range(5):
        w.sweep(T0 + 60 + i * 30)
    assert len(slack.posts) == 1
    assert enricher.calls == 7  # one describe per sweep


def test_one_batched_call_for_many_runs_and_unknown_ids(s3_store, slack, moto_server, ec2):
    now = time.time()  # moto stamps transitions with the real clock; older news would be backfilled silently
    ids = launch(ec2, 3)
    ec2.terminate_instances(InstanceIds=[ids[2]])
    rs = RunStore(s3_store)
    for n, iid in enumerate(ids + ["i-0000000000000dead"]):
        make_run(rs, f"run{n}", instance_id=iid, now=now)
    enricher = Ec2Enricher(moto_server.endpoint)
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), ec2=enricher)
    rep = w.sweep(now + 1)
    assert enricher.calls == 1
    assert rep.states == {"healthy": 2, "instance_gone": 2}
    texts = sorted(p["body"]["text"] for p in slack.posts)
    assert any("i-0000000000000dead no longer exists" in t for t in texts)
    assert any(f"{ids[2]} was terminated" in t for t in texts)


def test_ec2_outage_does_not_stop_the_sweep(s3_store, slack, private_moto):
    rs = RunStore(s3_store)
    rid = make_run(rs, instance_id="i-0123456789abcdef0")
    beat(rs, rid, T0 - 300)
    private_moto.stop()
    enricher = Ec2Enricher(private_moto.endpoint)
    enricher._clients["us-east-1"] = _fast_client(private_moto.endpoint)
    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), ec2=enricher)
    rep = w.sweep(T0)
    assert rep.states["agent_silent"] == 1 and any("describe_instances" in e for e in rep.errors)
    assert len(slack.posts) == 1


def _fast_client(endpoint):
    import boto3
    from botocore.config import Config

    return boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1))


def test_transition_time_parses_ec2_reason():
    assert transition_time("User initiated (2027-01-15 08:00:00 GMT)") == T0
    assert transition_time("") is None and transition_time(None) is None
