"""The trainer's parent inside its process group: runs it and writes its exit status to a file.

The agent starts `python -m agent.daemon.wrap EXIT_FILE PID_FILE -- cmd...` in a new session. Because
this tiny process outlives an agent crash, an agent restarted later can still learn how the
trainer ended (from EXIT_FILE) instead of only knowing that it is gone. Signals sent to the
group reach the trainer directly; this wrapper only notes them and keeps waiting.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from agent.protocol.atomic import write_atomic


def _status(code: int, pid: int | None) -> dict:
    if code < 0:
        return {"exit_code": None, "signal": signal.Signals(-code).name, "pid": pid, "ts": time.time()}
    return {"exit_code": code, "signal": None, "pid": pid, "ts": time.time()}


def main(argv: list[str]) -> int:
    """Run the command after `--`; record its pid and, when it ends, its exit status."""
    if len(argv) < 5 or argv[3] != "--":
        print("usage: python -m agent.daemon.wrap EXIT_FILE PID_FILE -- command...", file=sys.stderr)
        return 2
    exit_file, pid_file, cmd = argv[1], argv[2], argv[4:]
    # A handler, not SIG_IGN: ignored signals would be inherited by the trainer across exec.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        proc = subprocess.Popen(cmd)
    except OSError as exc:
        print(f"trainctl: cannot start the trainer {cmd[0]!r}: {exc}", file=sys.stderr, flush=True)
        write_atomic(exit_file, json.dumps(_status(127, None)))
        return 127
    write_atomic(pid_file, f"{proc.pid}\n")
    code = proc.wait()
    write_atomic(exit_file, json.dumps(_status(code, proc.pid)))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
