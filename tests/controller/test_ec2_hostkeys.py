"""EC2 state handling against moto's server, and host-key pinning per instance id."""

from __future__ import annotations

import subprocess

import paramiko
import pytest

from agent.protocol.errors import ConfigError, TrainctlError
from controller.launch import ec2
from controller.launch.hostkeys import HostKeyChanged, PinStore, check


@pytest.fixture
def client(moto_server):
    return ec2.ec2_client("us-east-1", "", moto_server.endpoint)


def new(moto_server, itype="g5.2xlarge") -> str:
    c = moto_server.client("ec2")
    ami = c.describe_images()["Images"][0]["ImageId"]
    return c.run_instances(ImageId=ami, InstanceType=itype, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


@pytest.mark.parametrize("state, start, action", [
    ("running", True, "ready"), ("pending", True, "wait"), ("stopped", True, "start"), ("stopped", False, "fail"),
    ("stopping", True, "wait_then_start"), ("shutting-down", True, "fail"), ("terminated", True, "fail"),
])
def test_action_for_state(state, start, action):
    assert ec2.action_for_state(state, start) == action


@pytest.mark.parametrize("itype, gpu", [("g5.2xlarge", True), ("g4dn.xlarge", True), ("p4d.24xlarge", True),
                                        ("g6e.12xlarge", True), ("t3.micro", False), ("g4ad.xlarge", False),
                                        ("c5.large", False)])
def test_gpu_types(itype, gpu):
    assert ec2.is_gpu_type(itype) is gpu


def test_stopped_instance_is_started(moto_server, client):
    iid = new(moto_server)
    moto_server.client("ec2").stop_instances(InstanceIds=[iid])
    said = []
    with pytest.raises(TrainctlError, match="--no-start"):
        ec2.ensure_running(client, iid, start_if_stopped=False, allow_no_gpu=False, timeout_s=5, poll_s=0.05)
    inst = ec2.ensure_running(client, iid, start_if_stopped=True, allow_no_gpu=False, timeout_s=5, poll_s=0.05,
                              say=said.append)
    assert inst.state == "running" and inst.public_ip
    assert any("starting stopped instance" in s for s in said)


def test_terminated_missing_and_cpu_instances(moto_server, client):
    iid = new(moto_server)
    moto_server.client("ec2").terminate_instances(InstanceIds=[iid])
    with pytest.raises(TrainctlError, match=r"in us-east-1 is (terminated|shutting-down): it cannot be started"):
        ec2.ensure_running(client, iid, start_if_stopped=True, allow_no_gpu=False, timeout_s=5, poll_s=0.05)
    with pytest.raises(TrainctlError, match="not found in region us-east-1"):
        ec2.ensure_running(client, "i-0000000000000dead", start_if_stopped=True, allow_no_gpu=False, timeout_s=5,
                           poll_s=0.05)
    cpu = new(moto_server, "t3.micro")
    with pytest.raises(TrainctlError, match="t3.micro, which has no NVIDIA GPU"):
        ec2.ensure_running(client, cpu, start_if_stopped=True, allow_no_gpu=False, timeout_s=5, poll_s=0.05)
    assert ec2.ensure_running(client, cpu, start_if_stopped=True, allow_no_gpu=True, timeout_s=5,
                              poll_s=0.05).state == "running"
    with pytest.raises(ConfigError):
        ec2.validate_instance_id("54.1.2.3")


def _key(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key(filename=str(path))


def test_tofu_pin_per_instance_id_and_changed_key_refused(tmp_path):
    pins = PinStore(tmp_path / "known_hosts")
    k1, k2 = _key(tmp_path, "k1"), _key(tmp_path, "k2")
    said = []
    assert check(pins, "i-0aaaaaaaaaaaaaaaa", k1, said.append) == "pinned"
    assert "trust on first use" in said[0]
    assert check(pins, "i-0aaaaaaaaaaaaaaaa", k1) == "match"
    # A different instance that inherited nothing: its own first use, whatever its IP.
    assert check(pins, "i-0bbbbbbbbbbbbbbbb", k2, said.append) == "pinned"
    with pytest.raises(HostKeyChanged) as ei:
        check(pins, "i-0aaaaaaaaaaaaaaaa", k2)
    assert "ctl hosts forget i-0aaaaaaaaaaaaaaaa" in str(ei.value)
    assert check(pins, "i-0aaaaaaaaaaaaaaaa", k1) == "match"  # the refused key was not stored
    assert pins.forget("i-0aaaaaaaaaaaaaaaa") and not pins.forget("i-0aaaaaaaaaaaaaaaa")
    assert check(pins, "i-0aaaaaaaaaaaaaaaa", k2, said.append) == "pinned"
    assert {n for n, _, _ in pins.names()} == {"i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"}
    assert oct((tmp_path / "known_hosts").stat().st_mode & 0o777) == "0o600"
