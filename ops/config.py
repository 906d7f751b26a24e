"""Building a watcher from options or environment: shared by `ctl watch` and the Lambda handler."""

from __future__ import annotations

import dataclasses
import os

from agent.protocol.durations import parse_duration
from agent.protocol.errors import ConfigError
from ops.state import Settings

# env name -> Settings field (the Lambda reads these; the CLI has flags of the same meaning)
ENV_SETTINGS = {"TRAINCTL_HEARTBEAT_S": "heartbeat_s", "TRAINCTL_HEARTBEAT_GRACE": "grace_s",
                "TRAINCTL_PROGRESS_TIMEOUT": "progress_timeout_s", "TRAINCTL_LOG_SILENCE": "log_silence_s",
                "TRAINCTL_SETUP_PROGRESS_TIMEOUT": "setup_progress_timeout_s",
                "TRAINCTL_LAUNCH_TIMEOUT": "launch_timeout_s", "TRAINCTL_ORPHAN_AFTER": "orphan_after_s"}
OPTIONAL = ("orphan_after_s",)  # settings that `never` (or off, none, 0) turns off

FLAGS = {"heartbeat_s": "--heartbeat", "grace_s": "--heartbeat-grace", "progress_timeout_s": "--progress-timeout",
         "log_silence_s": "--log-silence",
         "setup_progress_timeout_s": "--setup-timeout", "launch_timeout_s": "--launch-timeout",
         "orphan_after_s": "--orphan-after"}


def settings_from(values: dict[str, str | float | None], base: Settings = Settings(),
                  labels: dict[str, str] = FLAGS) -> Settings:
    """Settings with the given fields (durations as text or seconds) replaced; None keeps the default.

    `labels` names each field as the user typed it (a flag or an env var) in error messages.
    """
    changes = {}
    for name, raw in values.items():
        if raw is None or raw == "":
            continue
        label = labels.get(name, name)
        secs = parse_duration(raw, what=label, allow_never=name in OPTIONAL)
        if secs is None:
            changes[name] = None
            continue
        if secs <= 0:
            raise ConfigError(f"{label} must be positive, got {raw!r}")
        changes[name] = secs
    return dataclasses.replace(base, **changes)


def settings_from_env(env=os.environ) -> Settings:
    """Settings from the TRAINCTL_* variables of ENV_SETTINGS (the Lambda's configuration)."""
    from ops.warnings import warning_settings_from_env

    s = settings_from({field: env.get(var) for var, field in ENV_SETTINGS.items()},
                      labels={field: var for var, field in ENV_SETTINGS.items()})
    try:
        return dataclasses.replace(s, warnings=warning_settings_from_env(env))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_watcher(store_url: str | None, endpoint_url: str | None = None, *, settings: Settings = Settings(),
                  webhook_url: str | None = None, token: str | None = None, channel: str | None = None,
                  api_url: str | None = None, ec2: bool = True, ec2_endpoint_url: str | None = None,
                  region: str | None = None, console_file=None, store_region: str | None = None):
    """A Watcher over `store_url` with the configured Slack sink (or the terminal) and EC2 enrichment.

    `region` is for instances whose metadata names none; `store_region` is the bucket's."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.stores import open_store
    from ops.alerts.slack import make_notifier
    from ops.ec2 import Ec2Enricher
    from ops.sweep import Watcher

    rs = RunStore(open_store(store_url, endpoint_url=endpoint_url, region=store_region))  # no click: the Lambda
    notifier = make_notifier(webhook_url, token, channel, api_url, console_file=console_file)
    enricher = Ec2Enricher(ec2_endpoint_url, default_region=region or os.environ.get("AWS_REGION")
                           or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1") if ec2 else None
    return Watcher(rs, notifier, settings, enricher)
