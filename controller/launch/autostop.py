"""The controller's side of autostop and of instance bookkeeping: start the companion on the box
(once, see agent.daemon.companion), tag instances `ManagedBy=trainctl` so the watcher's orphan
scan sees them, and the countdown `ctl status` shows.

Only EC2 instances (`--existing`) get a companion: stopping is how an instance stops billing,
while `--host` and `--local` boxes are someone's machine and are never shut down by us.
The countdown is worked out from the store alone (the run's recorded `autostop` and when its
marker was written), because the companion counts from the moment the box went idle, which is
when the run's agent ended.
"""

from __future__ import annotations

import json
import shlex

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration, parse_duration
from agent.protocol.procs import parse_result

TAG_KEY, TAG_VALUE = p.MANAGED_TAG_KEY, p.MANAGED_TAG_VALUE  # ops.ec2 filters on the same tag


def ensure_managed_tag(client, instance_id: str, say=print) -> bool:
    """Tag the instance ManagedBy=trainctl unless it carries the tag; True if this call tagged it.
    A tag with another value is left alone, and a refused CreateTags is a warning, not a failed launch."""
    try:
        tags = client.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]},
                                             {"Name": "key", "Values": [TAG_KEY]}]).get("Tags", [])
        if tags:
            if tags[0].get("Value") != TAG_VALUE:
                say(f"note: {instance_id} is tagged {TAG_KEY}={tags[0].get('Value')}; left as is (the watcher's "
                    f"idle-instance scan only sees {TAG_KEY}={TAG_VALUE})")
            return False
        client.create_tags(Resources=[instance_id], Tags=[{"Key": TAG_KEY, "Value": TAG_VALUE}])
    except Exception as exc:  # botocore ClientError (no ec2:CreateTags) and friends
        say(f"note: could not tag {instance_id} {TAG_KEY}={TAG_VALUE} ({exc}); the watcher will not report it idle")
        return False
    say(f"tagged {instance_id} {TAG_KEY}={TAG_VALUE}")
    return True


def describe_setting(after: str) -> str:
    secs = parse_duration(after, what="autostop", allow_never=True)
    return "never (the box runs until you stop it)" if secs is None else \
        f"{fmt_duration(secs)} idle (no active run, no interactive SSH session), then the instance stops"


def start_companion(box, box_python: str, runs_root: str, cfg, target_kind: str, say=print) -> dict | None:
    """Start (or find) the autostop companion on an EC2 box and print the setting in force."""
    if target_kind != "existing":
        say("autostop:   off (only EC2 instances launched with --existing are stopped when idle)")
        return None
    spec = {"runs_root": runs_root, "after": cfg.autostop, "check_s": cfg.box.autostop_check_s,
            "action": cfg.box.autostop_action}
    r = box.check(f"{shlex.quote(box_python)} -m agent.daemon.companion {shlex.quote(json.dumps(spec))}",
                  "starting the autostop companion", timeout=60)
    res = parse_result(r.stdout) or {}
    how = {"started": "companion started", "restarted": "companion restarted with this setting",
           "already_running": "companion already running"}.get(res.get("status"), "companion status unknown")
    if res.get("status") == "skipped":
        say("autostop:   off: the box is not an EC2 instance and box.autostop_action is the default shutdown")
    else:
        say(f"autostop:   {describe_setting(cfg.autostop)} ({how}, pid {res.get('pid')})")
    return res


def countdown(md: p.Metadata | None, ended_ts: float | None, now: float, instance_state: str | None = None) -> str | None:
    """The autostop line of `ctl status`, or None for runs recorded without the setting."""
    config = (md.config or {}) if md else {}
    if "autostop" not in config:
        return None
    if not md.instance_id:
        return "off (not an EC2 instance)"
    secs = parse_duration(config["autostop"], what="autostop", allow_never=True)
    if secs is None:
        return "never: the instance runs until you stop it"
    if ended_ts is None:
        return f"{fmt_duration(secs)} after the run ends (no other run, no interactive SSH session)"
    left = ended_ts + secs - now
    if left > 0:
        return f"the instance stops in {fmt_duration(left)} (at {p.iso(ended_ts + secs)}) unless a run starts or " \
               "someone logs in"
    if instance_state in ("stopped", "stopping"):
        return f"stopped it {fmt_duration(-left)} ago (idle for {fmt_duration(secs)})"
    return f"due {fmt_duration(-left)} ago (idle since the run ended; an SSH session or another run keeps it up)"
