"""Entry point the controller runs ON the box: `python -m controller.boxside stage|start '<json>'`.

Kept to the standard library plus boto3, so it runs from the freshly made venv before anything
heavy is imported. Prints human progress lines, then one final `RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import sys
import time

RESULT = "RESULT "


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("stage", "start"):
        print("usage: python -m controller.boxside stage|start '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[2])
    from controller.start import read_env_file, start_agent

    if spec.get("env_file"):
        # Credentials travel in a 0600 file, never on a command line that `ps` would show.
        os.environ.update(read_env_file(spec["env_file"]))
    if argv[1] == "stage":
        from controller.stage import StageError, stage_all

        try:
            out = stage_all(spec, say=lambda m: print(m, flush=True))
        except StageError as exc:  # one line with the fix travels back; the controller says it
            print(RESULT + json.dumps({"error": str(exc)}), flush=True)
            return 1
    else:
        out = start_agent(spec)
    print(RESULT + json.dumps(out), flush=True)
    return 0


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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
