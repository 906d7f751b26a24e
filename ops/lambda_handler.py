"""The same sweep as `ctl watch --once`, as an AWS Lambda handler on an EventBridge schedule.

Configuration comes from the function's environment: TRAINCTL_STORE (required),
SLACK_WEBHOOK_URL or SLACK_BOT_TOKEN + SLACK_CHANNEL, TRAINCTL_S3_ENDPOINT /
TRAINCTL_EC2_ENDPOINT (tests), and the TRAINCTL_* timeouts of ops.config.ENV_SETTINGS. Alert
state lives in the store's ledgers, so concurrent or retried invocations never double-send.
"""

from __future__ import annotations

import os
import time

from agent.errors import ConfigError


def handler(event, context):
    """Sweep once; return the sweep report (CloudWatch logs show it). `event["now"]` is for tests."""
    from ops.config import build_watcher, settings_from_env

    store = os.environ.get("TRAINCTL_STORE")
    if not store:
        raise ConfigError("TRAINCTL_STORE is not set on the watcher function (e.g. s3://bucket/training-runs)")
    w = build_watcher(store, os.environ.get("TRAINCTL_S3_ENDPOINT"), settings=settings_from_env(),
                      webhook_url=os.environ.get("SLACK_WEBHOOK_URL"), token=os.environ.get("SLACK_BOT_TOKEN"),
                      channel=os.environ.get("SLACK_CHANNEL"), api_url=os.environ.get("SLACK_API_URL"),
                      ec2=os.environ.get("TRAINCTL_EC2", "1") != "0",
                      ec2_endpoint_url=os.environ.get("TRAINCTL_EC2_ENDPOINT"))
    now = float((event or {}).get("now") or time.time())
    report = w.sweep(now).as_dict()
    print(report)
    return report
