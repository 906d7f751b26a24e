"""Start the autostop companion on the box, once. Runs ON the box:
`python -m agent.daemon.companion '<json spec>'`, printing one final `RESULT {json}` line.

Under a lock, `<runs_root>/autostop.pid` records the companion's pid and argv. A live companion
with the same argv is left alone (two launches, one companion); one started with another
setting is replaced, so the newest launch's `autostop` is the one in force. Detached with
`setsid`, like the agent without systemd: it outlives the SSH session that started it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.procs import RESULT, wait_exec

PID_FILE = "autostop.pid"
LOCK_FILE = "autostop.lock"


def companion_argv(python: str, spec: dict) -> list[str]:
    """The `ctl autostop` command line for a spec (pure)."""
    argv = [python, "-m", "trainctl", "autostop", "--runs-root", spec["runs_root"], "--after", spec["after"],
            "--check-s", f"{float(spec['check_s']):g}"]
    return argv + (["--action", spec["action"]] if spec.get("action") else [])


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return None  # a zombie is not a companion
    return raw.decode(errors="replace").split("\0")[:-1]


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _cmdline(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def ensure(spec: dict) -> dict:
    """Start the companion unless the same one runs. {"status": started|already_running|restarted|skipped,
    "pid"}; skipped when the action is the default shutdown and the box is not an EC2 instance."""
    from agent.daemon.imds import on_ec2

    if not spec.get("action") and not on_ec2():
        # The default action halts the machine: right for an EC2 instance (it stops), wrong anywhere else.
        return {"status": "skipped", "pid": None}
    root = Path(spec["runs_root"])
    root.mkdir(parents=True, exist_ok=True)
    argv = companion_argv(sys.executable, spec)
    with open(root / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            rec = json.loads((root / PID_FILE).read_text())
        except (OSError, ValueError):
            rec = {}
        pid = int(rec.get("pid") or 0)
        running = _cmdline(pid) if pid else None
        status = "started"
        if running is not None and "autostop" in running:
            if running == rec.get("argv") == argv:
                return {"status": "already_running", "pid": pid}
            os.kill(pid, signal.SIGTERM)  # another setting: the newest launch's wins
            _wait_gone(pid)
            status = "restarted"
        with open(root / "autostop.out", "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, cwd=root)
        wait_exec(proc.pid, argv)
        write_atomic(root / PID_FILE, json.dumps({"pid": proc.pid, "argv": argv, "started": time.time()}))
        return {"status": status, "pid": proc.pid}


if __name__ == "__main__":
    print(RESULT + json.dumps(ensure(json.loads(sys.argv[1]))), flush=True)
