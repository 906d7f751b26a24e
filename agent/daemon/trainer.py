"""The trainer process as the agent sees it: start it, adopt it after an agent restart, signal it,
and learn how it ended.

The trainer runs under `agent.daemon.wrap` in a session of its own, with stdout and stderr appended to
the spool file: the agent is never in its output path, so a slow or absent store cannot block it,
and an agent crash does not take it down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from agent.daemon.workdir import Workdir
from agent.protocol.atomic import write_atomic


@dataclass(frozen=True)
class ExitStatus:
    """How the trainer ended. `lost` means no status could be recovered."""

    exit_code: int | None
    signal: str | None
    lost: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.lost


class Trainer:
    """A running (or finished) trainer process group."""

    def __init__(self, wd: Workdir, pgid: int, popen: subprocess.Popen | None = None,
                 create_time: float | None = None):
        self.wd = wd
        self.pgid = pgid
        self.popen = popen
        self._create_time = create_time  # guards an adopted pid against reuse by another process
        self._done: ExitStatus | None = None

    @classmethod
    def start(cls, wd: Workdir, cmd: list[str], env: dict[str, str]) -> Trainer:
        """Start `cmd` under the wrapper, output appended to the spool."""
        for stale in (wd.exit_status, wd.trainer_pid):
            stale.unlink(missing_ok=True)
        with open(wd.log, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "agent.daemon.wrap", str(wd.exit_status), str(wd.trainer_pid), "--", *cmd],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        write_atomic(wd.wrapper_pid, f"{popen.pid}\n".encode())
        return cls(wd, popen.pid, popen)

    @classmethod
    def adopt(cls, wd: Workdir, pgid: int | None, create_time: float | None) -> Trainer | None:
        """The trainer a previous agent started, if its wrapper is still the same live process."""
        if not pgid:
            return None
        try:
            proc = psutil.Process(pgid)
            if create_time and abs(proc.create_time() - create_time) > 1.0:
                return None  # the pid was reused by something else
            if proc.status() == psutil.STATUS_ZOMBIE:
                return cls(wd, pgid, create_time=create_time)  # ended; poll() reads the exit file
        except psutil.Error:
            return None
        return cls(wd, pgid, create_time=create_time)

    def create_time(self) -> float | None:
        try:
            return psutil.Process(self.pgid).create_time()
        except psutil.Error:
            return None

    @property
    def trainer_pid(self) -> int | None:
        return self.wd.read_pid(self.wd.trainer_pid)

    def alive(self) -> bool:
        return self.poll() is None

    def poll(self) -> ExitStatus | None:
        """None while running, else how it ended (read from the wrapper's exit file)."""
        if self._done:
            return self._done
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
        elif _running(self.pgid, self._create_time):
            return None
        else:
            code = None
        self._done = self._recover(code)
        return self._done

    def _recover(self, wrapper_code: int | None) -> ExitStatus:
        # The wrapper writes the file just before it exits; allow a moment for the rename.
        for _ in range(20):
            st = read_exit_status(self.wd)
            if st is not None:
                return st
            if wrapper_code is None and self.popen is None:
                break
            time.sleep(0.05)
        if wrapper_code is None:
            return ExitStatus(None, None, lost=True)
        if wrapper_code < 0:  # the whole group was killed, wrapper included
            return ExitStatus(None, signal.Signals(-wrapper_code).name)
        return ExitStatus(wrapper_code, None)

    def send(self, sig: int) -> None:
        """Signal the whole process group (trainer, its workers and the wrapper)."""
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def reap_stragglers(self) -> list[int]:
        """Kill what the trainer left behind in its process group (dataloader workers, a stuck
        child holding GPU memory), so the box is clean for the next run. Returns the pids killed."""
        born = self._create_time or self.create_time() or 0.0
        left = []
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getpgid(proc.pid) == self.pgid and proc.info["create_time"] >= born - 1.0 \
                        and proc.pid != os.getpid():
                    left.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        return [p.pid for p in left]

    def wait(self, timeout: float) -> ExitStatus | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.poll()
            if st:
                return st
            time.sleep(0.05)
        return self.poll()


def read_exit_status(wd: Workdir) -> ExitStatus | None:
    """The status the wrapper recorded, or None if it has not written one."""
    try:
        d = json.loads(wd.exit_status.read_text())
    except (OSError, ValueError):
        return None
    return ExitStatus(d.get("exit_code"), d.get("signal"))


def _running(pid: int, create_time: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if create_time and abs(proc.create_time() - create_time) > 1.0:
            return False  # our process is gone and its pid was reused
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
