"""EC2 enrichment: one batched describe_instances per region per sweep for every active run.

A filter on `instance-id` (rather than `InstanceIds=`) keeps one unknown id from failing the
whole batch; ids EC2 no longer knows come back as `not-found` only when the call succeeded.
"""

from __future__ import annotations

import re
from calendar import timegm
from collections.abc import Iterable
from dataclasses import dataclass
from time import strptime

from agent.protocol import records as p
from ops.state import InstanceInfo

# The tag infra/terraform/versions.tf puts on every resource (provider default_tags): how the
# orphan scan recognises a trainctl GPU box.
TAG_KEY, TAG_VALUE = p.MANAGED_TAG_KEY, p.MANAGED_TAG_VALUE
FILTER_MAX = 199  # describe_instances accepts up to 200 values per filter
_WHEN = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")  # AWS says GMT, moto UTC


def ec2_client(region: str, endpoint_url: str | None = None):
    """A boto3 EC2 client with botocore's standard retry mode."""
    import boto3
    from botocore.config import Config

    return boto3.client("ec2", region_name=region, endpoint_url=endpoint_url,
                        config=Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=15))


def transition_time(reason: str | None) -> float | None:
    """Unix time from EC2's StateTransitionReason, e.g. `User initiated (2026-11-21 14:02:11 GMT)`."""
    m = _WHEN.search(reason or "")
    return float(timegm(strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))) if m else None


def to_info(inst: dict) -> InstanceInfo:
    """One describe_instances Instance as an InstanceInfo."""
    reason = inst.get("StateReason") or {}
    return InstanceInfo(
        instance_id=inst["InstanceId"], state=inst.get("State", {}).get("Name", "unknown"),
        reason_code=reason.get("Code"), reason_message=reason.get("Message"),
        transition_at=transition_time(inst.get("StateTransitionReason")),
        spot=inst.get("InstanceLifecycle") == "spot", instance_type=inst.get("InstanceType"))


@dataclass
class TaggedInstance:
    """A running instance carrying the trainctl tag (a candidate orphan)."""

    instance_id: str
    region: str
    instance_type: str | None = None
    launch_time: float | None = None
    name: str | None = None
    spot: bool = False


def to_tagged(inst: dict, region: str) -> TaggedInstance:
    launched = inst.get("LaunchTime")
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags") or []}
    return TaggedInstance(inst["InstanceId"], region, inst.get("InstanceType"),
                          launched.timestamp() if hasattr(launched, "timestamp") else None, tags.get("Name"),
                          inst.get("InstanceLifecycle") == "spot")


class Ec2Enricher:
    """Looks up instances for a sweep; errors are reported, never fatal (the sweep goes on)."""

    def __init__(self, endpoint_url: str | None = None, default_region: str = "us-east-1", clients=None):
        self.endpoint_url = endpoint_url
        self.default_region = default_region
        self._clients = clients or {}
        self.calls = 0
        self.tag_calls = 0  # orphan scans, counted apart from the per-run enrichment
        self.last_error: str | None = None

    def _client(self, region: str):
        if region not in self._clients:
            self._clients[region] = ec2_client(region, self.endpoint_url)
        return self._clients[region]

    def describe(self, wanted: Iterable[tuple[str, str | None]]) -> dict[str, InstanceInfo]:
        """{instance_id: InstanceInfo} for (instance_id, region) pairs, batched per region."""
        by_region: dict[str, set[str]] = {}
        for iid, region in wanted:
            if iid and iid.startswith("i-"):
                by_region.setdefault(region or self.default_region, set()).add(iid)
        found: dict[str, InstanceInfo] = {}
        self.last_error = None
        for region, ids in by_region.items():
            ordered = sorted(ids)
            try:
                for i in range(0, len(ordered), FILTER_MAX):
                    batch = ordered[i:i + FILTER_MAX]
                    self.calls += 1
                    pages = self._client(region).get_paginator("describe_instances").paginate(
                        Filters=[{"Name": "instance-id", "Values": batch}])
                    seen = set()
                    for page in pages:
                        for res in page.get("Reservations", []):
                            for inst in res.get("Instances", []):
                                found[inst["InstanceId"]] = to_info(inst)
                                seen.add(inst["InstanceId"])
                    for iid in set(batch) - seen:
                        found[iid] = InstanceInfo(iid, "not-found")
            except Exception as exc:  # noqa: BLE001 - no credentials, throttled, endpoint down: skip enrichment
                self.last_error = f"EC2 describe_instances in {region} failed: {type(exc).__name__}: {exc}"
        return found

    def tagged_running(self, region: str | None = None, key: str = TAG_KEY,
                       value: str = TAG_VALUE) -> list[TaggedInstance]:
        """Running instances tagged `key=value` in `region`: one paginated call. Errors propagate."""
        region = region or self.default_region
        self.tag_calls += 1
        pages = self._client(region).get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{key}", "Values": [value]},
                     {"Name": "instance-state-name", "Values": ["running"]}])
        return [to_tagged(inst, region) for page in pages for res in page.get("Reservations", [])
                for inst in res.get("Instances", [])]
