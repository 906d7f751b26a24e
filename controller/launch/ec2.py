"""Find the instance, start it when stopped, wait until it runs: boto3 with botocore's retries.

The decision of what to do in each EC2 state is pure (`action_for_state`); the waiting uses
botocore's own waiters with the delays scaled by settings, so tests against moto stay quick.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from agent.protocol.errors import ConfigError, TrainctlError

EC2_ENDPOINT_ENV = "TRAINCTL_EC2_ENDPOINT"
# Instance families with NVIDIA GPUs (g4ad is AMD and is left out on purpose).
_GPU_FAMILY = re.compile(r"^(g3|g3s|g4dn|g5|g5g|g6|g6e|gr6|g7|p2|p3|p3dn|p4d|p4de|p5|p5e|p5en|p6)\.")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")


@dataclass
class Instance:
    """What the controller needs to know about the box."""

    id: str
    state: str
    type: str
    region: str
    public_ip: str | None
    private_ip: str | None
    public_dns: str | None
    lifecycle: str = "on-demand"  # EC2's InstanceLifecycle: "spot" for a spot box (prices the run)
    zone: str | None = None

    def address(self, which: str = "public") -> str | None:
        if which == "private":
            return self.private_ip
        return self.public_ip or self.public_dns


def is_gpu_type(instance_type: str) -> bool:
    """Whether an instance type has NVIDIA GPUs (g4dn, g5, p4d, ...)."""
    return bool(_GPU_FAMILY.match(instance_type or ""))


def action_for_state(state: str, start_if_stopped: bool) -> str:
    """What to do with an instance in `state`: ready | wait | start | wait_then_start | fail."""
    if state == "running":
        return "ready"
    if state == "pending":
        return "wait"
    if state == "stopped":
        return "start" if start_if_stopped else "fail"
    if state == "stopping":
        return "wait_then_start" if start_if_stopped else "fail"
    return "fail"  # shutting-down, terminated


def validate_instance_id(instance_id: str) -> str:
    if not _INSTANCE_ID.match(instance_id or ""):
        raise ConfigError(f"{instance_id!r} is not an EC2 instance id: they look like i-0123456789abcdef0")
    return instance_id


def ec2_client(region: str = "", profile: str = "", endpoint_url: str = ""):
    """An EC2 client from the usual AWS settings, with standard retries and an optional endpoint."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile or None)
    region = region or session.region_name or "us-east-1"
    endpoint = endpoint_url or os.environ.get(EC2_ENDPOINT_ENV) or None
    return session.client("ec2", region_name=region, endpoint_url=endpoint,
                          config=Config(retries={"mode": "standard"}, connect_timeout=10, read_timeout=30))


def describe(client, instance_id: str) -> Instance:
    """The instance, or a TrainctlError that names the region searched."""
    region = client.meta.region_name
    try:
        resp = client.describe_instances(InstanceIds=[instance_id])
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            raise TrainctlError(f"instance {instance_id} not found in region {region}: check the id, or pass "
                                f"--region (or AWS_REGION) for the region it lives in") from None
        from agent.protocol import awserrors

        raise TrainctlError(f"EC2 DescribeInstances {instance_id} in {region} failed: "
                            f"{awserrors.one_line(exc, fix_resource='check --existing and --region')}") from None
    found = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
    if not found:
        raise TrainctlError(f"instance {instance_id} not found in region {region}: check the id, or pass "
                            f"--region for the region it lives in")
    i = found[0]
    return Instance(id=i["InstanceId"], state=i["State"]["Name"], type=i.get("InstanceType", ""),
                    region=region, public_ip=i.get("PublicIpAddress"), private_ip=i.get("PrivateIpAddress"),
                    public_dns=i.get("PublicDnsName") or None, lifecycle=i.get("InstanceLifecycle") or "on-demand",
                    zone=i.get("Placement", {}).get("AvailabilityZone"))


def _wait(client, waiter: str, instance_id: str, timeout_s: float, poll_s: float) -> None:
    from botocore.exceptions import WaiterError

    attempts = max(1, int(timeout_s / poll_s))
    try:
        client.get_waiter(waiter).wait(InstanceIds=[instance_id],
                                       WaiterConfig={"Delay": max(poll_s, 0.01), "MaxAttempts": attempts})
    except WaiterError as exc:
        raise TrainctlError(f"instance {instance_id} did not reach {waiter.removeprefix('instance_')} "
                            f"within {timeout_s:.0f}s: {exc.last_response and exc.last_response.get('Error') or exc}"
                            ) from None


def ensure_running(client, instance_id: str, *, start_if_stopped: bool, allow_no_gpu: bool,
                   timeout_s: float, poll_s: float, say=print) -> Instance:
    """Bring the instance to `running` (start it if stopped) and return its fresh description."""
    validate_instance_id(instance_id)
    inst = describe(client, instance_id)
    if not allow_no_gpu and not is_gpu_type(inst.type):
        raise TrainctlError(f"instance {instance_id} is a {inst.type}, which has no NVIDIA GPU: use a g5/g6/p4d "
                            f"instance, or pass --allow-no-gpu to launch anyway")
    action = action_for_state(inst.state, start_if_stopped)
    if action == "fail":
        if inst.state in ("stopped", "stopping"):
            raise TrainctlError(f"instance {instance_id} is {inst.state} and --no-start was given: start it with "
                                f"`aws ec2 start-instances --instance-ids {instance_id}` or drop --no-start")
        raise TrainctlError(f"instance {instance_id} in {inst.region} is {inst.state}: it cannot be started again; "
                            f"launch on another instance (ctl provision creates one)")
    if action == "wait_then_start":
        say(f"instance {instance_id} is stopping; waiting for it to stop before starting it")
        _wait(client, "instance_stopped", instance_id, timeout_s, poll_s)
        action = "start"
    if action == "start":
        say(f"starting stopped instance {instance_id} ({inst.type}, {inst.region})")
        client.start_instances(InstanceIds=[instance_id])
        action = "wait"
    if action == "wait":
        say(f"waiting for instance {instance_id} to be running (timeout {timeout_s:.0f}s)")
        _wait(client, "instance_running", instance_id, timeout_s, poll_s)
        inst = describe(client, instance_id)
    return inst


def instance_state(instance_id: str, region: str = "", endpoint_url: str = "") -> str:
    """The instance's state for `ctl status`, or `unknown (<why>)`; never raises."""
    try:
        return describe(ec2_client(region, "", endpoint_url), instance_id).state
    except Exception as exc:  # status must render even when EC2 is unreachable
        return f"unknown ({str(exc).splitlines()[0][:120]})"
