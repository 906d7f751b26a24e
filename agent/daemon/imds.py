"""The EC2 instance metadata service (IMDSv2), as far as a spot interruption notice goes.

Two pieces: `parse_instance_action` (pure: the notice body -> SpotNotice) and `ImdsClient`, a
small stdlib HTTP client (token PUT first, then the GET with the token). The endpoint is a
setting so tests point it at a loopback stand-in. Standard library only: the agent must start
fast and import without anything heavy.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_S = 21600  # the maximum IMDS allows; the client renews on a 401 anyway


_DMI = Path("/sys/devices/virtual/dmi/id")


def on_ec2(dmi: Path = _DMI, hypervisor_uuid: Path = Path("/sys/hypervisor/uuid")) -> bool:
    """Whether this looks like an EC2 instance (DMI vendor, Nitro asset tag, or a Xen uuid)."""
    def read(path: Path) -> str:
        try:
            return path.read_text(errors="replace").strip()
        except OSError:
            return ""

    return ("amazon" in read(dmi / "sys_vendor").lower() or read(dmi / "board_asset_tag").startswith("i-")
            or read(hypervisor_uuid).lower().startswith("ec2"))


def resolve_endpoint(setting: str) -> str | None:
    """The endpoint to poll, or None. `auto` (the default) asks the link-local IMDS only on EC2, so
    laptops, CI and other SSH hosts send it nothing; `off` never asks; anything else is a URL."""
    value = (setting or "").strip()
    if value in ("", "off", "none"):
        return None
    if value == "auto":
        return DEFAULT_ENDPOINT if on_ec2() else None
    return value


class ImdsUnreachable(Exception):
    """IMDS did not answer (not on EC2, hop limit, blocked): the spot watch turns itself off."""


@dataclass(frozen=True)
class SpotNotice:
    """An interruption notice: what EC2 will do (terminate | stop | hibernate) and when (ISO 8601)."""

    action: str
    time: str

    def describe(self) -> str:
        return f"{self.action} at {self.time}" if self.time else self.action


def parse_instance_action(body: bytes | str) -> SpotNotice | None:
    """The notice in a `spot/instance-action` body, or None if the body is not one.

    EC2 sends `{"action": "terminate", "time": "2026-11-22T01:02:03Z"}`; anything else (HTML error
    pages from a proxy, an empty body) is not treated as a notice.
    """
    try:
        d = json.loads(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(d, dict) or not isinstance(d.get("action"), str) or not d["action"].strip():
        return None
    when = d.get("time")
    return SpotNotice(d["action"].strip(), when if isinstance(when, str) else "")


class ImdsClient:
    """IMDSv2 requests with a cached session token."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 1.0):
        self.endpoint = endpoint.rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None
        # IMDS is link-local: never route it through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, req: urllib.request.Request):
        try:
            return self._opener.open(req, timeout=self.timeout_s)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ImdsUnreachable(f"IMDS at {self.endpoint} did not answer: {getattr(exc, 'reason', exc)}") from None

    def token(self, renew: bool = False) -> str:
        """A session token (PUT /latest/api/token)."""
        if self._token and not renew:
            return self._token
        req = urllib.request.Request(self.endpoint + TOKEN_PATH, method="PUT", data=b"",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        try:
            with self._open(req) as resp:
                self._token = resp.read().decode().strip()
        except urllib.error.HTTPError as exc:
            raise ImdsUnreachable(f"IMDS at {self.endpoint} refused a token: HTTP {exc.code}") from None
        return self._token

    def instance_action(self) -> SpotNotice | None:
        """The pending interruption notice, or None (404: no notice)."""
        for attempt in (0, 1):
            req = urllib.request.Request(self.endpoint + ACTION_PATH,
                                         headers={"X-aws-ec2-metadata-token": self.token(renew=attempt > 0)})
            try:
                with self._open(req) as resp:
                    return parse_instance_action(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and attempt == 0:
                    continue  # the token expired: get a fresh one and ask again
                raise ImdsUnreachable(f"IMDS at {self.endpoint}: HTTP {exc.code} for {ACTION_PATH}") from None
        return None
