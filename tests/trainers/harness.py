"""Runs real `ctl agent run` subprocesses around fake trainers, with every interval scaled down.

Processes are tracked by pid and ended in `close()` (the agent, then the trainer's process group
read from the workdir's wrapper.pid), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.protocol import records as p

TRAINER = str(Path(__file__).with_name("fake_trainer.py"))
REPO = Path(__file__).resolve().parents[2]

FAST = ["--heartbeat-s", "0.5", "--log-flush-s", "0.3", "--stop-poll-s", "0.3", "--latest-s", "0.5",
        "--progress-s", "0.3", "--stop-grace-s", "1", "--retry-max-s", "1", "--finalize-timeout-s", "60",
        "--partial-line-s", "1", "--tick-s", "0.1"]


# The console script, as on a box; `python -m trainctl.cli` would import the CLI module twice.
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, TRAINER, *args]


class Agents:
    """Starts agents and cleans up everything they started."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.workdirs: set[Path] = set()

    def start(self, run_id: str, store_url: str, workdir: Path, cmd: list[str], env: dict | None = None,
              extra: list[str] | None = None, endpoint: str | None = None) -> subprocess.Popen:
        args = [*CTL, "agent", "run", "--run-id", run_id, "--store", store_url,
                "--workdir", str(workdir), *FAST, *(extra or [])]
        if endpoint:
            args += ["--endpoint-url", endpoint]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        log = open(self.tmp / f"agent-{len(self.procs)}.stderr", "wb")
        proc = subprocess.Popen([*args, "--", *cmd], env=full_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        proc.stderr_path = log.name
        log.close()
        self.procs.append(proc)
        self.workdirs.add(workdir)
        return proc

    @staticmethod
    def output(proc) -> str:
        return Path(proc.stderr_path).read_text(errors="replace")

    def wait(self, proc: subprocess.Popen, timeout: float = 60) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent did not finish in {timeout}s; its log:\n{self.output(proc)}") from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for wd in self.workdirs:
            kill_wrapper_group(wd)


def kill_wrapper_group(workdir: Path) -> None:
    """SIGKILL the trainer's process group, named by the workdir's wrapper.pid, unless that pid now
    leads another test's processes. A group id is not reused while the group has a member, so the
    group is this run's when its leader is gone or a zombie (an empty command line), or is the wrapper
    (its command line names the workdir); any other live leader took the freed pid."""
    try:
        pgid = int((workdir / p.WD_WRAPPER_PID).read_text())
        try:
            leader = Path(f"/proc/{pgid}/cmdline").read_bytes()
        except FileNotFoundError:
            leader = b""
        if not leader or str(workdir.resolve()).encode() in leader:
            os.killpg(pgid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


def wait_for(pred, timeout: float = 30, what: str = "condition", interval: float = 0.1):
    """Poll `pred` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PinnedTrainer:
    """The run's trainer, pinned by a pidfd, for tests that SIGSTOP and SIGCONT it.

    A pid read from trainer.pid may be stale: once that trainer has exited, the kernel hands its
    pid to a later process, and the suite wraps the pid space about every half hour, so that can
    be another test's. The pidfd names this one process, and it is checked to be the child of the
    run's wrapper, so a signal can only reach the trainer or fail here, never a stranger.
    """

    def __init__(self, workdir: Path):
        pid_file, wrapper_file = workdir / p.WD_TRAINER_PID, workdir / p.WD_WRAPPER_PID
        self.pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="trainer.pid"))
        self.fd = os.pidfd_open(self.pid)
        wrapper = int(wait_for(lambda: wrapper_file.exists() and wrapper_file.read_text().strip(), what="wrapper.pid"))
        try:
            ppid = int(Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            ppid = None
        if ppid != wrapper:
            os.close(self.fd)
            raise AssertionError(f"pid {self.pid} in {pid_file} is not the wrapper {wrapper}'s child (parent "
                                 f"{ppid}): the trainer has already exited")

    def send(self, sig: int) -> None:
        signal.pidfd_send_signal(self.fd, sig)

    def stop(self) -> None:
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT; a trainer that has exited meanwhile needs none."""
        try:
            self.send(signal.SIGCONT)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def chunk_seqs(rs, run_id: str) -> list[int]:
    from agent.protocol.records import chunk_seq

    return [chunk_seq(k) for k in rs.list_log_chunks(run_id)]


def all_objects(store, run_id: str) -> dict[str, bytes]:
    """Every object of a run, to scan for secrets."""
    return {k: store.get(k) for k in store.list(f"{run_id}/")}
