"""What a run cost: a dated on-demand price table times the run's billed time.

Prices are AWS EC2 on-demand Linux, us-east-1, USD per hour, as published on the EC2 pricing
page in January 2025. They drift; override per type with env TRAINCTL_PRICE_<TYPE> (dots as
underscores, e.g. TRAINCTL_PRICE_G5_2XLARGE=1.10). Linux bills per second with a 60-second minimum.

At launch the controller prices the box (`launch_price`: the spot price when EC2 says the
instance is spot and the price history can be read, else on-demand) and passes it to the agent
(`ctl agent run --hourly-usd X --price-basis spot|on-demand`), which writes the run's `cost_usd`
and `price_basis` into `_complete` / `_error`. `ctl runs` and the alerts show that figure; the
table times the duration is the fallback for runs without it.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("trainctl")

PRICE_TABLE_DATE = "2025-01"
PRICE_TABLE_REGION = "us-east-1"
MIN_BILLED_S = 60.0

HOURLY_USD: dict[str, float] = {
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.16xlarge": 4.096,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    "g6.xlarge": 0.8048,
    "g6.2xlarge": 0.9776,
    "g6.4xlarge": 1.3232,
    "g6.12xlarge": 4.6016,
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.12xlarge": 3.912,
}


def hourly_price(instance_type: str | None, overrides: dict[str, float] | None = None) -> float | None:
    """USD per hour for `instance_type`: override, env, then the table; None when unknown."""
    if not instance_type:
        return None
    if overrides and instance_type in overrides:
        return float(overrides[instance_type])
    env = os.environ.get("TRAINCTL_PRICE_" + instance_type.upper().replace(".", "_"))
    if env:
        try:
            return float(env)
        except ValueError:
            return None
    return HOURLY_USD.get(instance_type)


def billed_seconds(duration_s: float) -> float:
    """Seconds AWS bills for `duration_s` of running time (60 s minimum)."""
    return max(MIN_BILLED_S, float(duration_s))


def run_cost(instance_type: str | None, duration_s: float | None,
             overrides: dict[str, float] | None = None) -> float | None:
    """USD for a run of `duration_s` on `instance_type`, rounded to cents; None when unknown."""
    price = hourly_price(instance_type, overrides)
    if price is None or duration_s is None:
        return None
    return round(price * billed_seconds(duration_s) / 3600.0, 2)


def spot_price(client, instance_type: str, zone: str | None = None) -> float | None:
    """The current Linux spot price of `instance_type` (in `zone` when known), or None when EC2 will
    not say (no ec2:DescribeSpotPriceHistory permission, no history for the type)."""
    kwargs = {"AvailabilityZone": zone} if zone else {}
    try:
        resp = client.describe_spot_price_history(InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"],
                                                  StartTime=time.time(), MaxResults=10, **kwargs)
        prices = [float(h["SpotPrice"]) for h in resp.get("SpotPriceHistory", [])
                  if h.get("InstanceType") == instance_type]
    except Exception as exc:  # AccessDenied, throttling, an endpoint without the API: price on-demand instead
        log.debug("spot price of %s unavailable: %s", instance_type, exc)
        return None
    return max(prices) if prices else None  # across zones, the dearest: never under-report a cost


def launch_price(client, instance_type: str | None, lifecycle: str | None,
                 zone: str | None = None) -> tuple[float | None, str | None]:
    """(USD per hour, "spot" | "on-demand") for the box a run is launched on; (None, None) when unknown.
    `lifecycle` is EC2's InstanceLifecycle ("spot", absent for on-demand)."""
    if not instance_type:
        return None, None
    if lifecycle == "spot" and client is not None:
        usd = spot_price(client, instance_type, zone)
        if usd is not None:
            return usd, "spot"
    usd = hourly_price(instance_type)
    return (usd, "on-demand") if usd is not None else (None, None)


def fmt_cost(usd: float | None) -> str:
    """`$1.21`, or `-` when unknown."""
    return "-" if usd is None else f"${usd:,.2f}"
