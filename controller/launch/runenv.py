"""What a run takes along: its recorded config, its environment file, and the memory check.

Secrets (forwarded AWS keys, anything the user put in trainer.env under a secret-looking name)
reach the box only in a 0600 env file: never a command line, never metadata.json.
"""

from __future__ import annotations

import json
import shlex

from agent.protocol.errors import ConfigError, TrainctlError
from controller.config import RunConfig
from controller.launch.remote import Box

_SECRETISH = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL")


def recorded_config(cfg: RunConfig) -> dict:
    """The resolved config as recorded in metadata.json, with secret-looking env values masked."""
    d = cfg.to_dict()
    d["trainer"]["env"] = {k: ("[REDACTED]" if any(s in k.upper() for s in _SECRETISH) else v)
                           for k, v in d["trainer"]["env"].items()}
    return d


def env_file_bytes(cfg: RunConfig, region: str, targets: list[dict]) -> bytes:
    """The agent's KEY=value env file: trainer env, staged dirs, region, forwarded AWS keys (0600 on the box)."""
    env = dict(cfg.trainer.env)
    for t in targets:
        env[f"TRAINCTL_{t['name'].upper()}_DIR"] = t["dest"]
    if region:
        env["AWS_DEFAULT_REGION"] = region
    if cfg.store.forward_aws_credentials:
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            raise ConfigError("store.forward_aws_credentials is set but this shell has no AWS credentials")
        frozen = creds.get_frozen_credentials()
        env["AWS_ACCESS_KEY_ID"] = frozen.access_key
        env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
    bad = [k for k, v in env.items() if "\n" in v or "\n" in k]
    if bad:
        raise ConfigError(f"trainer.env: values must be single lines ({', '.join(bad)})")
    return "".join(f"{k}={v}\n" for k, v in env.items()).encode()


def check_memory(box: Box, argv: list[str] | None, say=print) -> None:
    """Refuse a run the trainer's own estimate says cannot fit the box's GPU (seconds, not an OOM later)."""
    if argv is None:
        return
    r = box.run(" ".join(shlex.quote(a) for a in argv), timeout=120)
    start = r.stdout.find("{")
    try:
        est = json.loads(r.stdout[start:]) if start >= 0 else None
    except ValueError:
        est = None
    if est is None:
        why = (r.stderr.strip() or r.stdout.strip() or f"exit {r.exited}").splitlines()[-1]
        say(f"memory estimate skipped: {why}")
        return
    gib = 1024**3
    verdict = f"{est['total'] / gib:.1f} GiB of {est['budget'] / gib:.1f} GiB per GPU"
    if not est.get("fits"):
        advice = "\n  ".join(est.get("advice") or ["lower per_device_batch_size or max_seq_length"])
        raise TrainctlError(f"the run does not fit the GPU: {verdict}. Change one of:\n  {advice}")
    say(f"memory estimate: fits, {verdict}")
