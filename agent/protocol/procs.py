"""Box-side processes: how one is recognised (its command line in /proc, as exec'd), and the one
`RESULT {json}` line a box-side command prints for the controller.

The box's active-run record and the autostop companion's pid file name a pid; that pid is ours
only while /proc/<pid>/cmdline still shows the command we started (pids are reused). The
controller's box-side start and the agent's companion both wait on this right after starting.
"""

from __future__ import annotations

import json
import time

RESULT = "RESULT "


def shows_argv(cmdline: bytes, argv: list[str]) -> bool:
    """Whether a /proc cmdline is `argv` as exec'd: as is, or behind the interpreter a `#!` line names.

    A script such as venv/bin/ctl runs as `<python> <script> args...`: the kernel puts the
    interpreter (and its one optional argument) in front of the script's path."""
    want = "\0".join(argv) + "\0"
    got = cmdline.decode(errors="replace")
    return got == want or got.endswith("\0" + want)


def wait_exec(pid: int, argv: list[str], timeout: float = 5.0) -> bool:
    """Wait until /proc/<pid>/cmdline shows `argv`; False if it never did (or the process is gone).

    Popen returns once the child is inside exec, but the kernel fills the new command line a moment
    later: a second launch that looked in between would think the process dead and start another."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if shows_argv(open(f"/proc/{pid}/cmdline", "rb").read(), argv):
                return True
        except OSError:
            return False
        time.sleep(0.01)
    return False


def parse_result(stdout: str) -> dict | list | None:
    """The RESULT payload from a boxside run's output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    return None
