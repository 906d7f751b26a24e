"""The same sweep as `ctl watch --once`, as an AWS Lambda handler on an EventBridge schedule;
fed an SQS batch (the bucket's `_error`/`_complete` notifications), it sweeps just those runs.

Configuration comes from the function's environment: TRAINCTL_STORE (required); the webhook
from SLACK_WEBHOOK_SSM_PARAMETER (a SecureString, read once per container, so the URL is in
neither the function's environment nor Terraform state) or SLACK_WEBHOOK_URL, or
SLACK_BOT_TOKEN + SLACK_CHANNEL; SLACK_BUTTONS=1 (Snooze/Stop on alerts); TRAINCTL_S3_ENDPOINT / TRAINCTL_EC2_ENDPOINT /
TRAINCTL_SSM_ENDPOINT (tests); the TRAINCTL_* timeouts of ops.config.ENV_SETTINGS. Alert state
lives in the store's ledgers, so overlapping or retried invocations never double-send. Only
`agent`, `ops`, `slack_sdk` and the runtime's boto3 are imported here (the zip has nothing else).
"""

from __future__ import annotations

import os
import time

from agent.protocol.errors import ConfigError
from ops.secrets import secret_from_ssm


def webhook_from_ssm(name: str, endpoint_url: str | None = None) -> str:
    """The webhook URL stored (encrypted) in SSM Parameter Store under `name`."""
    return secret_from_ssm(name, endpoint_url, what="Slack webhook")


def handler(event, context):
    """Sweep once; return the sweep report (CloudWatch logs show it). `event["now"]` is for tests."""
    from ops.config import build_watcher, settings_from_env

    env = os.environ
    store = env.get("TRAINCTL_STORE")
    if not store:
        raise ConfigError("TRAINCTL_STORE is not set on the watcher function (e.g. s3://bucket/training-runs)")
    webhook = env.get("SLACK_WEBHOOK_URL")
    param = env.get("SLACK_WEBHOOK_SSM_PARAMETER")
    if not webhook and param:
        webhook = webhook_from_ssm(param, env.get("TRAINCTL_SSM_ENDPOINT"))
    if webhook and not webhook.startswith(("https://", "http://")):
        webhook = None  # the placeholder Terraform puts in the parameter: alerts go to the log until set
        print(f"Slack webhook in {param} is not set yet; alerts go to this log")
    w = build_watcher(store, env.get("TRAINCTL_S3_ENDPOINT"), settings=settings_from_env(),
                      webhook_url=webhook, token=env.get("SLACK_BOT_TOKEN"), channel=env.get("SLACK_CHANNEL"),
                      api_url=env.get("SLACK_API_URL"), ec2=env.get("TRAINCTL_EC2", "1") != "0",
                      ec2_endpoint_url=env.get("TRAINCTL_EC2_ENDPOINT"))
    w.buttons = env.get("SLACK_BUTTONS") == "1"  # Terraform sets it when the buttons' function URL exists
    now = float((event or {}).get("now") or time.time())
    if _is_sqs_batch(event):
        return _sweep_batch(w, event, now)
    report = w.sweep(now).as_dict()
    print(report)
    return report


def _is_sqs_batch(event) -> bool:
    recs = (event or {}).get("Records") if isinstance(event, dict) else None
    return bool(recs) and all(r.get("eventSource") == "aws:sqs" for r in recs)


def _sweep_batch(w, event: dict, now: float) -> dict:
    """The queue's batch: sweep just the runs its S3 notifications name. A message whose run could
    not be read goes back to the queue (ReportBatchItemFailures; the dead-letter queue after a few)."""
    from ops.push import runs_from_sqs_batch

    store = w.rs.store
    by_msg = runs_from_sqs_batch(event, getattr(store, "bucket", ""), getattr(store, "prefix", ""))
    rep = w.sweep_runs(set().union(set(), *by_msg.values()), now)
    broken = {e.split(":", 1)[0] for e in rep.errors}
    report = rep.as_dict()
    report["batchItemFailures"] = [{"itemIdentifier": m} for m, ids in by_msg.items() if ids & broken]
    print(report)
    return report
