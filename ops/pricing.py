"""What a run cost: a dated on-demand price table times the run's billed time.

Prices are AWS EC2 on-demand Linux, us-east-1, USD per hour, as published on the EC2 pricing
page in January 2025. They drift; override per type with config `[cost] hourly_usd = {...}` or
env TRAINCTL_PRICE_<TYPE> (dots as underscores, e.g. TRAINCTL_PRICE_G5_2XLARGE=1.10).
Linux on-demand bills per second with a 60-second minimum.
"""

from __future__ import annotations

import os

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


def fmt_cost(usd: float | None) -> str:
    """`$1.21`, or `-` when unknown."""
    return "-" if usd is None else f"${usd:,.2f}"
