"""Entry point the controller runs ON the box: `python -m controller.box.entry stage|start '<json>'`.

Kept to the standard library plus boto3, so it runs from the freshly made venv before anything
heavy is imported. Prints human progress lines, then one final `RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import sys

from agent.protocol.procs import RESULT


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("stage", "start"):
        print("usage: python -m controller.box.entry stage|start '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[2])
    from controller.box.start import read_env_file, start_agent

    if spec.get("env_file"):
        # Credentials travel in a 0600 file, never on a command line that `ps` would show.
        os.environ.update(read_env_file(spec["env_file"]))
    if argv[1] == "stage":
        from controller.box.stage import StageError, stage_all

        try:
            out = stage_all(spec, say=lambda m: print(m, flush=True))
        except StageError as exc:  # one line with the fix travels back; the controller says it
            print(RESULT + json.dumps({"error": str(exc)}), flush=True)
            return 1
    else:
        out = start_agent(spec)
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
