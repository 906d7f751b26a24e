"""Never pay for an idle GPU: stop the box after `autostop` of no active run and no SSH session.

`decide` is pure (facts and `now` in, verdict out); `AutostopDaemon` gathers the facts on the box
(live agents under the runs root, interactive SSH sessions), records its countdown in
`<runs_root>/autostop.json` for `ctl status`, and runs the shutdown action once when due.
The action is a setting (default `shutdown -h now`, with sudo when not root) so tests observe it.
"Stop, not terminate": the instance's shutdown behaviour is `stop` (infra/), so the volume stays.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from agent.protocol import records as p
from agent.protocol.atomic import write_atomic
from agent.protocol.durations import fmt_duration

STATE_FILE = "autostop.json"


@dataclass
class IdleFacts:
    """What the box looks like right now."""

    now: float
    active_runs: list[str]
    ssh_sessions: int


@dataclass
class Verdict:
    """`busy` (timer reset), `idle` (counting down) or `stop` (due now)."""

    action: str
    idle_since: float
    remaining_s: float | None
    reason: str


def decide(facts: IdleFacts, idle_since: float, idle_s: float | None) -> Verdict:
    """Whether to stop, given facts, when idleness began and the autostop setting (None = never)."""
    if facts.active_runs or facts.ssh_sessions:
        why = []
        if facts.active_runs:
            why.append(f"{len(facts.active_runs)} active run(s)")
        if facts.ssh_sessions:
            why.append(f"{facts.ssh_sessions} interactive SSH session(s)")
        return Verdict("busy", facts.now, idle_s, ", ".join(why))
    if idle_s is None:
        return Verdict("idle", idle_since, None, "autostop is off (never)")
    remaining = idle_since + idle_s - facts.now
    if remaining <= 0:
        return Verdict("stop", idle_since, 0.0, f"idle for {fmt_duration(facts.now - idle_since)} (autostop {fmt_duration(idle_s)})")
    return Verdict("idle", idle_since, remaining, "idle")


def interactive_ssh_sessions() -> int:
    """Interactive SSH logins: sshd session processes holding a pty (`sshd: user@pts/N`).

    ctl's own commands run without a pty (`@notty`), so they never keep the box awake.
    """
    n = 0
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if (proc.info["name"] or "").startswith("sshd") and "@pts/" in title:
            n += 1
    return n


def active_runs(runs_root: Path) -> list[str]:
    """Run folders under `runs_root` whose agent (agent.pid) is alive."""
    found = []
    if not runs_root.is_dir():
        return found
    for pidfile in sorted(runs_root.glob(f"*/{p.WD_AGENT_PID}")):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(pid):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    found.append(pidfile.parent.name)
            except psutil.Error:
                pass
    return found


def default_action() -> list[str]:
    cmd = ["shutdown", "-h", "now"]
    return cmd if os.geteuid() == 0 else ["sudo", "-n", *cmd]


class AutostopDaemon:
    """The loop on the box: check every `check_s`, stop once when idle long enough."""

    def __init__(self, runs_root: str | os.PathLike, idle_s: float | None, check_s: float = 30.0,
                 action: list[str] | str | None = None):
        self.runs_root = Path(runs_root)
        self.idle_s = idle_s
        self.check_s = check_s
        self.action = shlex.split(action) if isinstance(action, str) else (action or default_action())
        self.idle_since = time.time()

    def facts(self) -> IdleFacts:
        return IdleFacts(time.time(), active_runs(self.runs_root), interactive_ssh_sessions())

    def step(self) -> Verdict:
        """One check: gather facts, decide, record the countdown."""
        v = decide(self.facts(), self.idle_since, self.idle_s)
        self.idle_since = v.idle_since
        self._record(v)
        return v

    def _record(self, v: Verdict) -> None:
        self.runs_root.mkdir(parents=True, exist_ok=True)
        state = {**asdict(v), "autostop_s": self.idle_s, "checked": time.time(), "pid": os.getpid(),
                 "deadline": None if v.remaining_s is None else time.time() + v.remaining_s}
        write_atomic(self.runs_root / STATE_FILE, json.dumps(state))

    def run(self, max_checks: int | None = None) -> int:
        """Loop until the action fires (returns its exit code) or `max_checks` pass (returns -1)."""
        n = 0
        while max_checks is None or n < max_checks:
            n += 1
            try:
                v = self.step()
            except Exception as exc:  # one bad check must not end the watchdog of an expensive box
                print(f"autostop: check failed: {exc}", flush=True)
                time.sleep(self.check_s)
                continue
            if v.action == "stop":
                print(f"autostop: {v.reason}; running {shlex.join(self.action)}", flush=True)
                return subprocess.run(self.action).returncode
            time.sleep(self.check_s)
        return -1


def read_state(runs_root: str | os.PathLike) -> dict | None:
    """The countdown the daemon last recorded, for `ctl status`."""
    try:
        return json.loads((Path(runs_root) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
