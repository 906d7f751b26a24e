"""Start the agent detached on the box, under the per-box lock. Runs ON the box (boxside.py).

A systemd unit when systemd runs there (Restart=on-failure, survives reboots of the SSH
session and of the agent), otherwise `setsid` with a pid file. The lock file plus the
`active.json` record make "one run per box" hold even when two launches race, or when a launch
was killed halfway and is run again: the second one sees the live agent and does not start
another.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from string import Template

from agent.protocol import records as p
from agent.protocol.atomic import write_atomic
from agent.protocol.procs import wait_exec

UNIT_TEMPLATE = Path(__file__).parent / "templates" / "trainctl-agent.service"
# The agent exits 0 once a marker is stored (even for a failed trainer); 2 is bad usage: no restart.
FINAL_EXIT_CODES = "2"


def unit_name(run_id: str) -> str:
    return f"trainctl-agent-{run_id}"


def render_unit(run_id: str, argv: list[str], user: str, workdir: str, env_file: str) -> str:
    """The systemd unit for one run's agent (pure)."""
    return Template(UNIT_TEMPLATE.read_text()).substitute(
        run_id=run_id, user=user, workdir=workdir, env_file=env_file,
        exec_start=" ".join(shlex.quote(a) for a in argv), final_codes=FINAL_EXIT_CODES)


def read_env_file(path: str) -> dict[str, str]:
    """KEY=value lines (the format systemd's EnvironmentFile reads too)."""
    env = {}
    try:
        for line in Path(path).read_text().splitlines():
            k, eq, v = line.partition("=")
            if eq and k.strip() and not k.startswith("#"):
                env[k.strip()] = v
    except FileNotFoundError:
        pass
    return env


def _alive(pid: int, run_id: str) -> bool:
    try:
        return run_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _active(path: str) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    rec["alive"] = _alive(int(rec.get("pid") or 0), rec.get("run_id", "?"))
    return rec


def _start_setsid(spec: dict, env: dict) -> subprocess.Popen:
    wd = Path(spec["workdir"])
    out = open(wd / "agent.out", "ab")
    try:
        return subprocess.Popen(spec["argv"], cwd=wd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        out.close()


def _priv(argv: list[str]) -> list[str]:
    """`argv` with sudo when this login user is not root (the box-side twin of Box.priv)."""
    return argv if os.getuid() == 0 else ["sudo", "-n", *argv]


def _start_systemd(spec: dict) -> int:
    name = unit_name(spec["run_id"])
    unit = render_unit(spec["run_id"], spec["argv"], spec["user"], spec["workdir"], spec["env_file"])
    subprocess.run(_priv(["tee", f"/etc/systemd/system/{name}.service"]), input=unit.encode(), check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(_priv(["systemctl", "daemon-reload"]), check=True)
    subprocess.run(_priv(["systemctl", "start", name]), check=True)
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", name], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def start_agent(spec: dict) -> dict:
    """Start the agent unless one is active. Returns {"status": started|already_running|busy|failed, ...}."""
    home = Path(spec["lock_file"]).parent
    home.mkdir(parents=True, exist_ok=True)
    with open(spec["lock_file"], "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        active = _active(spec["active_file"])
        if active and active["alive"] and active.get("run_id") != spec.get("finished_run"):
            status = "already_running" if active.get("run_id") == spec["run_id"] else "busy"
            return {"status": status, "run_id": active.get("run_id"), "pid": active.get("pid")}
        Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **read_env_file(spec["env_file"]), **spec.get("env", {})}
        if spec.get("systemd"):
            pid, proc = _start_systemd(spec), None
        else:
            proc = _start_setsid(spec, env)
            pid = proc.pid
            wait_exec(pid, spec["argv"])  # before anyone can read the record and look the pid up
            Path(spec["workdir"], p.WD_AGENT_PID).write_text(f"{pid}\n")
        rec = {"run_id": spec["run_id"], "pid": pid, "workdir": spec["workdir"], "started": time.time(),
               "via": "systemd" if spec.get("systemd") else "setsid"}
        write_atomic(spec["active_file"], json.dumps(rec))
    # A command that cannot even start (bad path, bad flag) dies at once: say so now, not in an hour.
    if proc is not None:
        try:
            code = proc.wait(float(spec.get("grace_s", 1.0)))
        except subprocess.TimeoutExpired:
            code = None
        if code not in (None, 0):
            tail = Path(spec["workdir"], "agent.out").read_text(errors="replace").strip().splitlines()[-10:]
            return {"status": "failed", "pid": pid, "exit_code": code, "output": tail}
    return {"status": "started", "pid": pid, "via": rec["via"]}
