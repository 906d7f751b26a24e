"""`ctl provision` against moto's server with real terraform and the real aws provider, checked with
boto3, then `ctl destroy`, which keeps the data volume.

One stack (an apply costs about a minute), checked step by step in a single test: xdist_group
does not keep a module on one worker with this pytest/xdist pair, and destroy must come last.
The moto server is this module's own, so no other test sees these instances.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.moto_server import FAKE_CREDS, MotoServer

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("infra-apply")]

CIDR = "203.0.113.7/32"
WRITE_ACTIONS = ("s3:Put", "s3:Delete", "s3:Abort", "s3:Restore", "s3:Replicate", "s3:Create")


def ctl(args, env, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainctl", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# Found in a stalled run's TF_LOG: moto clears a queue's Policy on any SetQueueAttributes that does
# not name it, so when the redrive policy was set just after the queue policy the provider polled
# forever for the policy to propagate (about one loaded clean-clone run in three). events.tf now
# orders the two. The stack's first provision stays watched, as a net for any other stall of the
# provider against moto: when it has printed nothing but "Still creating..." for STALL_S (a healthy
# apply here completes a resource every few seconds, the slowest within about a minute), it is
# killed with its process group and provision runs again, as a user would. Terraform records each
# resource as it completes, so the rerun creates only what was left, and it must succeed; the
# warning names what was in progress and the debug log.
STALL_S = float(os.environ.get("TRAINCTL_TEST_STALL_S", "200"))
KILL_AT = os.environ.get("TRAINCTL_TEST_KILL_AT", "")  # test the watchdog itself: stall once this starts


def provision_watched(args, env, log_dir: Path) -> subprocess.CompletedProcess:
    """`ctl provision` with the stall watchdog above; a stalled first try is reported as a warning
    naming its debug log (TF_LOG_PATH) and the resources it left in progress."""
    import threading
    import warnings

    debug = log_dir / "terraform-debug.log"
    env = {**env, "TF_LOG": "DEBUG", "TF_LOG_PATH": str(debug)}
    cmd = [sys.executable, "-m", "trainctl", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    lines: list[str] = []
    progress = threading.Event()
    stalled = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if KILL_AT and line.startswith(KILL_AT) and line.rstrip().endswith("Creating..."):
                stalled.set()
            elif "Still " not in line:  # terraform repeats "Still creating... [40s elapsed]" while it waits
                progress.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    err_parts: list[str] = []
    drain = threading.Thread(target=lambda: err_parts.append(proc.stderr.read()), daemon=True)
    drain.start()
    while proc.poll() is None and not stalled.is_set():
        if not progress.wait(STALL_S) and proc.poll() is None:
            stalled.set()
        progress.clear()
    if not stalled.is_set():
        reader.join()
        drain.join()
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "".join(err_parts))
    os.killpg(proc.pid, 9)
    proc.wait()
    reader.join(10)
    out = "".join(lines)
    started = {ln.split(":")[0] for ln in out.splitlines() if ln.rstrip().endswith("Creating...")}
    done = {ln.split(":")[0] for ln in out.splitlines() if "complete after" in ln}
    warnings.warn(f"ctl provision stalled (nothing but 'Still creating' for {STALL_S:g}s; in progress: "
                  f"{sorted(started - done)}; terraform debug log: {debug}); provisioning again", stacklevel=2)
    return ctl(args, {**env, "TF_LOG_PATH": str(log_dir / "terraform-debug-retry.log")})


class Stack:
    def __init__(self, moto, env, home, name, proc):
        self.moto, self.env, self.home, self.name, self.proc = moto, env, home, name, proc
        self.outputs = json.loads((home / "infra" / "default" / "outputs.json").read_text())

    def client(self, svc):
        return self.moto.client(svc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, terraform_env):
    moto = MotoServer()
    moto.start()
    # No docker here: the queue's event source invokes moto's stub Lambda (it answers OK at once)
    # instead of trying a container inside the S3 request that notified the queue.
    import requests

    requests.post(f"{moto.endpoint}/moto-api/config", json={"lambda": {"use_docker": False}}, timeout=10)
    try:
        tmp = tmp_path_factory.mktemp("stack")
        home = tmp / "home"
        name = f"t{uuid.uuid4().hex[:8]}"
        key = tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        ami = moto.client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        var_file = tmp / "stack.tfvars.json"
        var_file.write_text(json.dumps({
            "name": name, "ami_id": ami, "ssh_public_key": (tmp / "id_ed25519.pub").read_text().strip(),
            "allowed_ssh_cidrs": [CIDR], "slack_webhook_parameter": f"/{name}/slack-webhook",
            "enable_slack_buttons": True, "slack_signing_secret_parameter": f"/{name}/slack-signing-secret"}))
        env = {**terraform_env, **FAKE_CREDS, "TRAINCTL_HOME": str(home)}
        env.pop("AWS_PROFILE", None)
        proc = provision_watched(["provision", "--var-file", str(var_file), "--auto-approve", "--endpoint-url",
                                  moto.endpoint], env, tmp)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        st = Stack(moto, env, home, name, proc)
        st.var_file = var_file
        yield st
    finally:
        moto.stop()


def check_provision_prints_plan_and_next_command_and_saves_outputs(stack):
    out = stack.outputs
    assert out["instance_id"].startswith("i-") and out["data_volume_id"].startswith("vol-")
    assert out["public_ip"] and out["public_dns"] and out["ssh_user"] == "ubuntu"
    assert out["store_url"] == f"s3://{stack.name}-123456789012-us-east-1/training-runs"
    assert "to add, 0 to change, 0 to destroy" in stack.proc.stdout
    assert f"ctl launch --existing {out['instance_id']} --store {out['store_url']}" in stack.proc.stdout


def check_instance_is_g5_with_imdsv2_encrypted_root_and_the_key_pair(stack):
    ec2 = stack.client("ec2")
    inst = ec2.describe_instances(InstanceIds=[stack.outputs["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["InstanceType"] == "g5.2xlarge"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["KeyName"].startswith(f"{stack.name}-")
    assert inst["IamInstanceProfile"]["Arn"].split("/")[-1].startswith(f"{stack.name}-box-")
    root = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == inst["RootDeviceName"]][0]
    vol = ec2.describe_volumes(VolumeIds=[root["Ebs"]["VolumeId"]])["Volumes"][0]
    assert vol["Encrypted"] is True


def check_data_volume_is_300gb_gp3_encrypted_and_attached(stack):
    ec2 = stack.client("ec2")
    vol = ec2.describe_volumes(VolumeIds=[stack.outputs["data_volume_id"]])["Volumes"][0]
    assert (vol["Size"], vol["VolumeType"], vol["Encrypted"]) == (300, "gp3", True)
    assert (vol["Iops"], vol["Throughput"]) == (3000, 250)
    assert [(a["InstanceId"], a["Device"]) for a in vol["Attachments"]] == [(stack.outputs["instance_id"], "/dev/sdf")]
    user_data = ec2.describe_instance_attribute(InstanceId=stack.outputs["instance_id"], Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert f"TRAINCTL_DATA_VOLUME_ID='{vol['VolumeId']}'" in script and "TRAINCTL_MOUNT_POINT='/mnt/training'" in script
    lint = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout  # the script as rendered, settings prepended


def check_security_group_admits_only_the_given_cidr_on_ssh(stack):
    ec2 = stack.client("ec2")
    inst = ec2.describe_instances(InstanceIds=[stack.outputs["instance_id"]])["Reservations"][0]["Instances"][0]
    sgs = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in inst["SecurityGroups"]])["SecurityGroups"]
    ingress = [p for sg in sgs for p in sg["IpPermissions"]]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in ingress] == [("tcp", 22, 22)]
    assert [r["CidrIp"] for r in ingress[0]["IpRanges"]] == [CIDR]
    assert not ingress[0].get("Ipv6Ranges") and not ingress[0].get("UserIdGroupPairs")


def _role_statements(iam, role_name):
    stmts = []
    for pol in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role_name, PolicyName=pol)["PolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        stmts += doc["Statement"]
    assert not iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    return stmts


def _as_list(v):
    return v if isinstance(v, list) else [v]


def check_instance_role_writes_only_under_the_runs_prefix_and_has_no_wildcard_action(stack):
    iam = stack.client("iam")
    profile = stack.client("ec2").describe_instances(InstanceIds=[stack.outputs["instance_id"]])[
        "Reservations"][0]["Instances"][0]["IamInstanceProfile"]["Arn"].split("/")[-1]
    role = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"][0]["RoleName"]
    stmts = _role_statements(iam, role)
    bucket = stack.outputs["store_url"].split("/")[2]
    runs = f"arn:aws:s3:::{bucket}/training-runs/*"
    writes = set()
    for st in stmts:
        assert st["Effect"] == "Allow"
        actions = _as_list(st["Action"])
        assert all("*" not in a for a in actions), actions
        for a in actions:
            if a.startswith(WRITE_ACTIONS):
                writes.add(a)
                assert _as_list(st["Resource"]) == [runs], st
            else:
                assert a in ("s3:GetObject", "s3:ListBucket", "s3:ListMultipartUploadParts"), a
    assert "s3:PutObject" in writes
    reads = {r for st in stmts if "s3:GetObject" in _as_list(st["Action"]) for r in _as_list(st["Resource"])}
    assert reads == {f"arn:aws:s3:::{bucket}/models/*", f"arn:aws:s3:::{bucket}/datasets/*", runs}


def check_bucket_blocks_public_access_and_is_encrypted_versioned_with_lifecycle(stack):
    s3 = stack.client("s3")
    bucket = stack.outputs["store_url"].split("/")[2]
    pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(pab[k] for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"))
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    chunk = rules["expire-old-log-chunks"]
    assert chunk["Filter"]["Tag"] == {"Key": "trainctl-kind", "Value": "log-chunk"} and chunk["Expiration"]["Days"] == 90
    assert rules["expire-overwritten-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7


def check_watcher_lambda_runs_the_ops_handler_every_minute_with_a_narrow_role(stack):
    fn = stack.client("lambda").get_function(FunctionName=stack.outputs["watcher_function"])["Configuration"]
    assert fn["Handler"] == "ops.lambda_handler.handler" and fn["Runtime"].startswith("python3")
    env = fn["Environment"]["Variables"]
    assert env["TRAINCTL_STORE"] == stack.outputs["store_url"]
    assert env["SLACK_WEBHOOK_SSM_PARAMETER"] == f"/{stack.name}/slack-webhook"
    assert not any("hooks.slack.com" in v for v in env.values())  # the secret stays in SSM
    param = stack.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/{stack.name}/slack-webhook"]}])["Parameters"]
    assert [p["Type"] for p in param] == ["SecureString"]

    events = stack.client("events")
    rule = events.describe_rule(Name=f"{stack.name}-watcher-schedule")
    assert rule["ScheduleExpression"] == "rate(1 minute)" and rule["State"] == "ENABLED"
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [fn["FunctionArn"]]

    iam = stack.client("iam")
    stmts = _role_statements(iam, fn["Role"].split("/")[-1])
    bucket = stack.outputs["store_url"].split("/")[2]
    by_action = {a: _as_list(st["Resource"]) for st in stmts for a in _as_list(st["Action"])}
    assert all("*" not in a for a in by_action)
    assert sorted(by_action["s3:PutObject"]) == [f"arn:aws:s3:::{bucket}/training-runs/*/_alerts.json",
                                                 f"arn:aws:s3:::{bucket}/training-runs/_index/*"]
    assert by_action["s3:GetObject"] == [f"arn:aws:s3:::{bucket}/training-runs/*"]
    assert by_action["ec2:DescribeInstances"] == ["*"]
    assert by_action["ssm:GetParameter"] == [f"arn:aws:ssm:us-east-1:123456789012:parameter/{stack.name}/slack-webhook"]
    writes = [a for a in by_action if a.startswith(WRITE_ACTIONS) or a.split(":")[1].startswith(("Put", "Delete"))]
    assert sorted(writes) == ["logs:PutLogEvents", "s3:PutObject", "sqs:DeleteMessage"]  # its own queue's


def check_bucket_notifies_the_queue_and_the_watcher_sweeps_what_it_names(stack, slack, monkeypatch):
    """The push path as applied: _error/_complete under the runs prefix -> the queue (dead-letter
    queue after 5 receives) -> the watcher's event source; an agent's CUDA OOM reaches Slack from
    the queue's batch, and with the queue's mapping off the schedule's sweep still catches a failure."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_s3 import S3Store
    from ops.lambda_handler import handler
    from tests.ops.test_fakes import fail, make_run
    from tests.ops.test_push_sqs import as_lambda_event, drain

    sqs, s3, lam = stack.client("sqs"), stack.client("s3"), stack.client("lambda")
    name = stack.outputs["events_queue"]
    assert name == f"{stack.name}-run-events"
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{name}-dlq") and int(redrive["maxReceiveCount"]) == 5
    assert attrs["SqsManagedSseEnabled"] == "true" and int(attrs["VisibilityTimeout"]) >= 50
    [stmt] = json.loads(attrs["Policy"])["Statement"]
    bucket = stack.outputs["store_url"].split("/")[2]
    assert stmt["Principal"] == {"Service": "s3.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"
    assert stmt["Condition"]["ArnEquals"]["aws:SourceArn"] == f"arn:aws:s3:::{bucket}"
    confs = s3.get_bucket_notification_configuration(Bucket=bucket)["QueueConfigurations"]
    rules = sorted(tuple(sorted((r["Name"].lower(), r["Value"]) for r in c["Filter"]["Key"]["FilterRules"]))
                   for c in confs)
    assert rules == [(("prefix", "training-runs/"), ("suffix", "/_complete")),
                     (("prefix", "training-runs/"), ("suffix", "/_error"))]
    assert {c["QueueArn"] for c in confs} == {attrs["QueueArn"]}
    [esm] = lam.list_event_source_mappings(EventSourceArn=attrs["QueueArn"])["EventSourceMappings"]
    assert esm["FunctionArn"].endswith(f":function:{stack.outputs['watcher_function']}") and esm["BatchSize"] == 10
    # The emulator cannot run the function itself: the test is the Lambda service here, polling the queue.
    lam.update_event_source_mapping(UUID=esm["UUID"], Enabled=False)
    sqs.purge_queue(QueueUrl=url)
    for k, v in {**FAKE_CREDS, "TRAINCTL_STORE": stack.outputs["store_url"], "TRAINCTL_S3_ENDPOINT": stack.moto.endpoint,
                 "SLACK_WEBHOOK_URL": slack.webhook_url, "TRAINCTL_EC2": "0"}.items():
        monkeypatch.setenv(k, v)
    rs = RunStore(S3Store(bucket, "training-runs", endpoint_url=stack.moto.endpoint))
    now = time.time()
    oom = make_run(rs, "pushoom", now=now)
    fail(rs, oom, now, "cuda_oom")
    msgs = [m for m in drain(sqs, url, 1) if oom in m["Body"]]
    report = handler({**as_lambda_event(msgs), "now": now + 1}, None)
    assert report["active"] == 1 and report["sent"] == 1 and report["batchItemFailures"] == []
    [post] = slack.posts
    assert post["body"]["text"].startswith("🔥 Training FAILED: cuda_oom") and oom in post["body"]["text"]
    late = make_run(rs, "pushlate", now=now)
    fail(rs, late, now + 2, "disk_full")
    assert handler({"now": now + 3}, None)["sent"] == 1  # the schedule's sweep: no event needed
    assert "disk_full" in slack.posts[1]["body"]["text"] and len(slack.posts) == 2
    lam.update_event_source_mapping(UUID=esm["UUID"], Enabled=True)  # as applied: the re-apply is a no-op


def check_slack_buttons_function_url_reads_its_secret_from_ssm_and_may_write_only_acks_and_stops(stack):
    lam, iam = stack.client("lambda"), stack.client("iam")
    name = f"{stack.name}-slack-actions"
    fn = lam.get_function(FunctionName=name)["Configuration"]
    assert fn["Handler"] == "ops.interact.lambda_handler"
    env = fn["Environment"]["Variables"]
    assert env == {"TRAINCTL_STORE": stack.outputs["store_url"],
                   "SLACK_SIGNING_SECRET_SSM_PARAMETER": f"/{stack.name}/slack-signing-secret"}
    url = lam.get_function_url_config(FunctionName=name)
    assert url["AuthType"] == "NONE" and stack.outputs["slack_interactivity_url"] == url["FunctionUrl"]
    param = stack.client("ssm").describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/{stack.name}/slack-signing-secret"]}])["Parameters"]
    assert [p["Type"] for p in param] == ["SecureString"]
    watcher = lam.get_function(FunctionName=stack.outputs["watcher_function"])["Configuration"]
    assert watcher["Environment"]["Variables"]["SLACK_BUTTONS"] == "1"
    bucket = stack.outputs["store_url"].split("/")[2]
    by_action = {a: _as_list(st["Resource"]) for st in _role_statements(iam, fn["Role"].split("/")[-1])
                 for a in _as_list(st["Action"])}
    assert sorted(by_action["s3:PutObject"]) == [f"arn:aws:s3:::{bucket}/training-runs/*/_alerts.json",
                                                 f"arn:aws:s3:::{bucket}/training-runs/*/control/stop"]
    assert by_action["ssm:GetParameter"] == [
        f"arn:aws:ssm:us-east-1:123456789012:parameter/{stack.name}/slack-signing-secret"]
    writes = [a for a in by_action if a.startswith(WRITE_ACTIONS) or a.split(":")[1].startswith(("Put", "Delete"))]
    assert sorted(writes) == ["logs:PutLogEvents", "s3:PutObject"] and all("*" not in a for a in by_action)


def check_ctl_launch_existing_on_the_provisioned_box(stack, sshd, tmp_path, reap, monkeypatch):
    """The command `ctl provision` printed works: its public IP maps to the sshd fixture, the
    run goes to the store it created, and the agent's fake trainer completes."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_s3 import S3Store
    from controller.launch.wheel import build
    from tests.controller import test_launch as launch

    out = stack.outputs
    sshd.map_ip(out["public_ip"])
    env = {**stack.env, "TRAINCTL_SSH_CONFIG": str(sshd.ssh_config), "TRAINCTL_EC2_ENDPOINT": stack.moto.endpoint,
           "TRAINCTL_S3_ENDPOINT": stack.moto.endpoint, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TRAINCTL_STORE", None)
    old_home = os.environ.get("TRAINCTL_HOME")
    os.environ["TRAINCTL_HOME"] = str(stack.home)  # the wheel cache lives in ctl's home
    try:
        launch.WHEEL[0] = build(say=lambda m: None).path
    finally:
        os.environ.pop("TRAINCTL_HOME") if old_home is None else os.environ.update(TRAINCTL_HOME=old_home)
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(launch.FAKE_TRAINER)
    bucket = out["store_url"].split("/")[2]
    cfg = launch.write_config(tmp_path / "run.toml", bucket, stack.moto.endpoint, tmp_path / "box", trainer, steps=3)

    line = next(ln for ln in stack.proc.stdout.splitlines() if ln.strip().startswith("ctl launch --existing"))
    args = shlex.split(line.strip())[1:]
    args[args.index("--config") + 1] = str(cfg)
    rid = "infra-20260101-000001"
    reap.append(rid)
    r = ctl([*args, "--run-id", rid], env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr

    for k, v in FAKE_CREDS.items():
        monkeypatch.setenv(k, v)
    rs = RunStore(S3Store(bucket, "training-runs", endpoint_url=stack.moto.endpoint, region="us-east-1"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not rs.store.exists(rs.k(rid, "_complete")):
        time.sleep(0.5)
    assert rs.store.exists(rs.k(rid, "_complete")), rs.store.get(rs.k(rid, "_error"))
    md = rs.read_metadata(rid)
    assert md.instance_id == out["instance_id"] and md.instance_type == "g5.2xlarge"


def check_ctl_launch_new_reapplies_the_stack_then_launches(stack, sshd, tmp_path, reap):
    """`ctl launch --new` provisions (here: re-applies the same stack, nothing to change) and launches
    on the instance it outputs, with the store and region from the outputs, not from flags."""
    from tests.controller import test_launch as launch

    out = stack.outputs
    env = {**stack.env, "TRAINCTL_SSH_CONFIG": str(sshd.ssh_config), "TRAINCTL_EC2_ENDPOINT": stack.moto.endpoint,
           "TRAINCTL_S3_ENDPOINT": stack.moto.endpoint, "TRAINCTL_AWS_ENDPOINT": stack.moto.endpoint,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TRAINCTL_STORE", None)
    trainer = tmp_path / "fake_trainer_new.py"
    trainer.write_text(launch.FAKE_TRAINER)
    bucket = out["store_url"].split("/")[2]
    cfg = launch.write_config(tmp_path / "run-new.toml", bucket, stack.moto.endpoint, tmp_path / "box-new", trainer,
                              steps=2)
    raw = cfg.read_text()
    cfg.write_text("\n".join(ln for ln in raw.splitlines() if not ln.startswith("url =")) + "\n")  # store from outputs
    rid = "infranew-20260101-000002"
    reap.append(rid)
    r = ctl(["launch", "--new", "--var-file", str(stack.var_file), "--yes", "--config", str(cfg), "--run-id", rid],
            env, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"provisioned {out['instance_id']}; launching on it" in r.stdout
    assert "Plan: 0 to add, 0 to change, 0 to destroy." in r.stdout, r.stdout[-2000:]  # re-apply is a no-op
    md = json.loads(stack.client("s3").get_object(Bucket=bucket, Key=f"training-runs/{rid}/metadata.json")["Body"].read())
    assert md["instance_id"] == out["instance_id"]


def check_destroy_asks_first_and_says_what_it_keeps(stack):
    """On a terminal `ctl destroy` lists what goes and what stays, and "no" changes nothing."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "trainctl", "destroy"], env=stack.env, stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(master, b"n\n")
        out, err = proc.communicate(timeout=180)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 0, out + err
    assert "aws_instance.gpu" in out and "Destroy? [y/N]" in out
    assert f"data volume {stack.outputs['data_volume_id']}" in out and "--delete-data-volume" in out
    assert "store bucket" in out and "cancelled: nothing was destroyed" in out
    inst = stack.client("ec2").describe_instances(InstanceIds=[stack.outputs["instance_id"]])
    assert inst["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


def check_destroy_keeps_the_data_volume_and_says_so(stack):
    ec2 = stack.client("ec2")
    out = stack.outputs
    r = ctl(["destroy", "--yes"], stack.env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"data volume {out['data_volume_id']}" in r.stdout and "Destroyed. Kept:" in r.stdout

    vol = ec2.describe_volumes(VolumeIds=[out["data_volume_id"]])["Volumes"][0]
    assert vol["State"] == "available" and vol["Size"] == 300  # detached, data intact
    inst = ec2.describe_instances(InstanceIds=[out["instance_id"]])["Reservations"][0]["Instances"][0]
    assert inst["State"]["Name"] == "terminated"
    stack.client("s3").head_bucket(Bucket=out["store_url"].split("/")[2])  # the store is kept too
    fns = [f["FunctionName"] for f in stack.client("lambda").list_functions()["Functions"]]
    assert out["watcher_function"] not in fns


def check_next_provision_plans_to_reattach_the_kept_volume_and_reuse_the_bucket(stack, monkeypatch):
    from infra.stack import GENERATED_VARS, Stack

    out = stack.outputs
    workdir = Path(stack.home) / "infra" / "default"
    assert not (workdir / "outputs.json").exists()  # destroyed by the previous test
    for k in ("TF_CLI_CONFIG_FILE", *FAKE_CREDS):
        monkeypatch.setenv(k, stack.env[k])
    st = Stack.existing(workdir, echo=lambda line: None)
    st.prepare()
    generated = json.loads((workdir / GENERATED_VARS).read_text())
    assert generated["data_volume_id"] == out["data_volume_id"]
    assert generated["create_bucket"] is False and generated["bucket_name"] == out["store_url"].split("/")[2]

    changes = dict((addr, action) for action, addr in st.terraform().plan("tfplan"))
    assert changes["aws_instance.gpu"] == "create" and changes["aws_volume_attachment.data"] == "create"
    assert "aws_ebs_volume.data[0]" not in changes and "aws_s3_bucket.store[0]" not in changes
    assert changes["aws_s3_bucket_public_access_block.store[0]"] == "create"  # settings managed again
    assert "aws_ssm_parameter.slack_webhook[0]" not in changes  # the webhook already there is kept


@pytest.mark.timeout(1500)  # the stack's setup may include one stalled provision (STALL_S) and its rerun
def test_provision_check_launch_destroy_and_plan_the_next_provision(stack, sshd, tmp_path, reap, monkeypatch, slack):
    """The whole life of one stack, in order (one apply is a minute; pytest-xdist may split a
    module across workers, so the steps that need order share one test). Each check is named for
    the property it proves."""
    check_provision_prints_plan_and_next_command_and_saves_outputs(stack)
    check_instance_is_g5_with_imdsv2_encrypted_root_and_the_key_pair(stack)
    check_data_volume_is_300gb_gp3_encrypted_and_attached(stack)
    check_security_group_admits_only_the_given_cidr_on_ssh(stack)
    check_instance_role_writes_only_under_the_runs_prefix_and_has_no_wildcard_action(stack)
    check_bucket_blocks_public_access_and_is_encrypted_versioned_with_lifecycle(stack)
    check_watcher_lambda_runs_the_ops_handler_every_minute_with_a_narrow_role(stack)
    check_bucket_notifies_the_queue_and_the_watcher_sweeps_what_it_names(stack, slack, monkeypatch)
    check_slack_buttons_function_url_reads_its_secret_from_ssm_and_may_write_only_acks_and_stops(stack)
    check_ctl_launch_existing_on_the_provisioned_box(stack, sshd, tmp_path, reap, monkeypatch)
    check_ctl_launch_new_reapplies_the_stack_then_launches(stack, sshd, tmp_path, reap)
    check_destroy_asks_first_and_says_what_it_keeps(stack)
    check_destroy_keeps_the_data_volume_and_says_so(stack)
    check_next_provision_plans_to_reattach_the_kept_volume_and_reuse_the_bucket(stack, monkeypatch)
