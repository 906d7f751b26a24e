"""Host keys: trust on first use, pinned per instance id in ctl's own known_hosts.

AWS recycles public IPs, so a pin keyed by IP would either refuse a new, honest box or (worse)
accept an impostor that inherited a familiar IP. The pin is keyed by what identifies the box:
the instance id for `--existing`, `host:port` for `--host`. A changed key for a pinned name is
refused with the command that forgets the pin; it is never silently replaced.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import paramiko

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import TrainctlError


def trainctl_home() -> Path:
    """$TRAINCTL_HOME, default ~/.trainctl."""
    return Path(os.environ.get("TRAINCTL_HOME") or Path.home() / ".trainctl")


def known_hosts_path() -> Path:
    return trainctl_home() / "known_hosts"


class HostKeyChanged(TrainctlError):
    """The box presented a different key than the one pinned for it."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    return key.fingerprint


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _render(hk: paramiko.HostKeys) -> bytes:
    """The known_hosts text paramiko would save (it only saves to a path)."""
    with tempfile.TemporaryDirectory() as d:
        hk.save(f"{d}/known_hosts")
        return Path(d, "known_hosts").read_bytes()


def _load(path: Path) -> paramiko.HostKeys:
    hk = paramiko.HostKeys()
    if path.exists():
        hk.load(str(path))
    return hk


class PinStore:
    """ctl's known_hosts file: one pinned key per box name (instance id or host:port)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or known_hosts_path())

    def get(self, name: str) -> dict[str, paramiko.PKey]:
        return dict(_load(self.path).lookup(name) or {})

    def pin(self, name: str, key: paramiko.PKey) -> None:
        with _locked(self.path):
            hk = _load(self.path)
            hk.add(name, key.get_name(), key)
            write_atomic(self.path, _render(hk), mode=0o600)

    def forget(self, name: str) -> bool:
        """Drop every key pinned for `name`; True if there was one."""
        with _locked(self.path):
            hk = _load(self.path)
            if name not in hk:
                return False
            del hk[name]
            write_atomic(self.path, _render(hk), mode=0o600)
            return True

    def names(self) -> list[tuple[str, str, str]]:
        """(name, key type, fingerprint) for every pin."""
        hk = _load(self.path)
        return [(n, t, fingerprint(k)) for n in hk.keys() for t, k in hk[n].items()]


def check(pins: PinStore, name: str, key: paramiko.PKey, say=print) -> str:
    """Verify `key` against the pin for `name`: 'pinned' (first use), 'match', or raise HostKeyChanged."""
    known = pins.get(name)
    if not known:
        pins.pin(name, key)
        say(f"pinned host key for {name}: {key.get_name()} {fingerprint(key)} (trust on first use)")
        return "pinned"
    same_type = known.get(key.get_name())
    if same_type is not None and same_type == key:
        return "match"
    if same_type is None and any(k == key for k in known.values()):
        return "match"
    old = ", ".join(f"{t} {fingerprint(k)}" for t, k in known.items())
    raise HostKeyChanged(
        f"host key for {name} changed: pinned {old}, the box now offers {key.get_name()} {fingerprint(key)}. "
        f"This happens when the box was rebuilt, or when someone is intercepting the connection. If you know "
        f"the box was rebuilt, forget the old key with `ctl hosts forget {name}` and launch again.")


class PinnedPolicy(paramiko.MissingHostKeyPolicy):
    """Paramiko policy that consults the pin for a fixed box name instead of the hostname.

    The client gets no other host keys loaded, so paramiko asks this policy on every connect.
    """

    def __init__(self, name: str, pins: PinStore | None = None, say=print):
        self.name = name
        self.pins = pins or PinStore()
        self.say = say
        self.result: str | None = None
        self.pending: paramiko.PKey | None = None  # a first-use key, pinned by commit() once login worked

    def missing_host_key(self, client, hostname, key):
        if not self.pins.get(self.name):
            # First use: nothing is pinned for a box we could not log in to (a refused launch leaves no trace).
            self.pending, self.result = key, "pending"
            return
        self.result = check(self.pins, self.name, key, self.say)

    def commit(self) -> None:
        """Pin the first-use key now that the login with it succeeded (a no-op when it was pinned already)."""
        if self.pending is not None:
            self.result = check(self.pins, self.name, self.pending, self.say)
            self.pending = None
