"""The one module that owns the SSH connection (Fabric), plus a local stand-in with the same face.

Everything else talks to a `Box`: `run` a shell snippet, `put` bytes or a file. `SshBox` honours
the user's ssh_config (HostName, User, Port, IdentityFile, ProxyJump) through Fabric, adds
`--ssh-key`/`--user`, and verifies the host key against ctl's pin for the box (hostkeys.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import ConfigError, TrainctlError
from agent.protocol.procs import RESULT
from controller.launch.hostkeys import HostKeyChanged, PinnedPolicy, PinStore

# Paramiko logs connection failures with tracebacks from its transport thread; ctl reports them
# itself as one line, so keep paramiko's own records out of the user's terminal.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass
class Result:
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


class Box:
    """A machine commands run on. `needs_sudo` is decided once facts tell who we are (plan.privileged)."""

    name = "box"
    needs_sudo = False

    def run(self, cmd: str, *, timeout: float | None = None, stream: bool = False) -> Result:
        raise NotImplementedError

    def put_bytes(self, data: bytes, path: str, mode: int = 0o644) -> None:
        raise NotImplementedError

    def put_file(self, local: str | os.PathLike, path: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def check(self, cmd: str, what: str, *, timeout: float | None = None, stream: bool = False) -> Result:
        """Run `cmd`; a non-zero exit is a TrainctlError naming `what` with the output's tail."""
        r = self.run(cmd, timeout=timeout, stream=stream)
        if not r.ok:
            tail = "\n".join((r.stderr.strip() or r.stdout.strip()).splitlines()[-8:])
            raise TrainctlError(f"{what} failed on {self.name} (exit {r.exited}):\n{tail}")
        return r


class HumanLines:
    """A box command's output on its way to the terminal, line by line: the `RESULT {json}` line
    is for the controller (boxside.parse_result), never for the user's eyes."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.partial = ""

    def write(self, text: str) -> None:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            if not line.startswith(RESULT):
                self.out.write(line + "\n")
        self.out.flush()

    def flush(self) -> None:
        self.out.flush()

    def finish(self) -> None:
        """Write a last line that had no newline (unless it is the wire line)."""
        if self.partial and not self.partial.startswith(RESULT):
            self.out.write(self.partial + "\n")
        self.partial = ""
        self.out.flush()


def _fabric_config(ssh_config: str):
    from fabric import Config

    if ssh_config:
        if not Path(ssh_config).expanduser().is_file():
            raise ConfigError(f"ssh config file {ssh_config} does not exist (ssh.config / --ssh-config)")
        return Config(runtime_ssh_path=str(Path(ssh_config).expanduser()))
    return Config()


class SshBox(Box):
    """A box reached over SSH with Fabric; host key pinned under `pin_name`."""

    def __init__(self, host: str, *, pin_name: str | None = None, user: str = "", port: int = 0, key: str = "",
                 ssh_config: str = "", connect_timeout: float = 10, pins: PinStore | None = None, say=print):
        from fabric import Connection

        cfg = _fabric_config(ssh_config)
        looked_up = cfg.base_ssh_config.lookup(host)
        if key and not Path(key).expanduser().is_file():
            raise ConfigError(f"ssh key {key} does not exist (--ssh-key / ssh.key)")
        user = user or looked_up.get("user") or "ubuntu"
        kwargs = {"key_filename": [str(Path(key).expanduser())]} if key else {}
        self.conn = Connection(host, user=user, port=port or None, config=cfg, connect_kwargs=kwargs,
                               connect_timeout=int(max(1, connect_timeout)))
        self.pin_name = pin_name or f"{self.conn.host}:{self.conn.port}"
        self.policy = PinnedPolicy(self.pin_name, pins, say)
        self.conn.client.set_missing_host_key_policy(self.policy)
        gw = self.conn.gateway
        self.policies = [self.policy]
        if gw is not None and hasattr(gw, "client"):  # a ProxyJump bastion gets its own pin
            self.policies.append(PinnedPolicy(f"{gw.host}:{gw.port}", pins, say))
            gw.client.set_missing_host_key_policy(self.policies[-1])
        self.name = f"{self.conn.user}@{self.conn.host}:{self.conn.port}"
        self.say = say

    def wait_ready(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """Connect, retrying while sshd is not up yet, with a visible progress line and a deadline."""
        import paramiko

        start = time.monotonic()
        last_note = -1e9
        while True:
            try:
                self.conn.open()
                for policy in self.policies:  # logged in: only now is a first-use host key pinned
                    policy.commit()
                # Long quiet steps (pip, staging) must not be dropped by a NAT or bastion idle timeout.
                self.conn.transport.set_keepalive(30)
                return
            except HostKeyChanged:
                self.conn.close()
                raise
            except paramiko.AuthenticationException as exc:
                raise TrainctlError(f"SSH login to {self.name} was refused ({exc}): check --user / ssh.user and "
                                    f"--ssh-key / ssh.key, or the User/IdentityFile of this host in your ssh_config"
                                    ) from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self.conn.close()
                waited = time.monotonic() - start
                if waited >= timeout_s:
                    raise TrainctlError(f"SSH to {self.name} not ready after {timeout_s:.0f}s ({exc}): check the "
                                        f"security group allows port {self.conn.port} from here, and the "
                                        f"instance's status checks") from None
                if waited - last_note >= 10 or last_note < 0:
                    self.say(f"waiting for SSH on {self.name} ... {waited:.0f}s ({type(exc).__name__})")
                    last_note = waited
                time.sleep(poll_s)

    def run(self, cmd: str, *, timeout: float | None = None, stream: bool = False) -> Result:
        from invoke.exceptions import CommandTimedOut

        out = HumanLines() if stream else None
        try:
            r = self.conn.run(cmd, hide=not stream, warn=True, timeout=timeout, in_stream=False,
                              out_stream=out, err_stream=sys.stderr if stream else None)
            if out is not None:
                out.finish()
        except CommandTimedOut:
            raise TrainctlError(f"command on {self.name} timed out after {timeout:.0f}s: {cmd[:120]}") from None
        except (OSError, EOFError) as exc:
            raise TrainctlError(f"SSH connection to {self.name} lost ({exc}): launch again; every step "
                                f"is idempotent and resumes where it stopped") from None
        return Result(r.stdout, r.stderr, r.exited)

    def put_bytes(self, data: bytes, path: str, mode: int = 0o644) -> None:
        # The part name is this upload's own: two launches racing to the same cached path (the
        # wheel, the box-side script) each rename a whole file of theirs, and the last one wins.
        import paramiko

        part = f"{path}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            sftp = self.conn.sftp()
            with sftp.open(part, "wb") as fh:
                sftp.chmod(part, mode)  # before the bytes land: secrets are never world-readable
                fh.write(data)
            sftp.posix_rename(part, path)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._forget(part)
            raise TrainctlError(f"uploading {path} to {self.name} failed ({exc}): check the folder exists and is "
                                f"writable by {self.conn.user}, then launch again") from None

    def put_file(self, local, path: str) -> None:
        self.put_bytes(Path(local).read_bytes(), path)

    def _forget(self, part: str) -> None:
        try:  # best effort: the connection may be what failed
            self.conn.sftp().remove(part)
        except Exception:  # noqa: BLE001 - the upload's own error is the one reported
            pass

    def close(self) -> None:
        self.conn.close()


class LocalBox(Box):
    """This machine, for `ctl launch --local`: same interface, commands run through bash."""

    name = "localhost"

    def __init__(self):
        self.needs_sudo = False  # local runs never escalate

    def run(self, cmd: str, *, timeout: float | None = None, stream: bool = False) -> Result:
        try:
            p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TrainctlError(f"local command timed out after {timeout:.0f}s: {cmd[:120]}") from None
        if stream:
            lines = HumanLines()
            lines.write(p.stdout or "")
            lines.finish()
        return Result(p.stdout or "", p.stderr or "", p.returncode)

    def put_bytes(self, data: bytes, path: str, mode: int = 0o644) -> None:
        write_atomic(path, data, mode=mode)

    def put_file(self, local, path: str) -> None:
        self.put_bytes(Path(local).read_bytes(), path)
