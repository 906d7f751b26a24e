"""A stand-in for an unmodified HF script that saves `checkpoint-N` slowly, steered by a control file.

    save_trainer.py CONTROL PARENT [--chdir DIR]

It prints HF-style log dicts every 0.1 s (the agent reads them from its output) and, at every
step, reads the JSON control file the test rewrites atomically:

- `save: N`: stop stepping and save `PARENT/checkpoint-N` (PARENT relative to the working
  directory, `$TRAINCTL_OUTPUT_DIR` for "output"): the weights file appears, then keeps growing
  (a slow save) and nothing is printed, until the control says
- `finish: true`: `trainer_state.json` is written last, as HF Trainer does; the trainer still
  prints nothing until
- `resume: true`: stepping goes on;
- `end: true`: exit 0.

Once a change of the control is applied (the folder made, the state file written, stepping
resumed) it writes the control's `gen` to `<control>.ack`, so a test waits on that, not on time.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _read(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _ack(path: str, gen) -> None:
    tmp = f"{path}.ack.tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(gen))
    os.replace(tmp, f"{path}.ack")


def _save(control: str, folder: str, c: dict) -> dict:
    """The slow save: the folder and a growing weights file, the state file once told, then a wait."""
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, "model.safetensors")
    with open(weights, "ab") as fh:
        fh.write(b"w" * 1024)
    _ack(control, c.get("gen"))
    while not c.get("finish"):
        with open(weights, "ab") as fh:  # files still growing
            fh.write(b"w" * 1024)
        time.sleep(0.1)
        c = _read(control)
    with open(os.path.join(folder, "trainer_state.json"), "w") as fh:
        json.dump({"global_step": c["save"]}, fh)
    _ack(control, c.get("gen"))
    while not c.get("resume"):  # silent: only the folder can say the save is over
        time.sleep(0.1)
        c = _read(control)
    return c


def main() -> int:
    control, parent = sys.argv[1], sys.argv[2]
    if "--chdir" in sys.argv:
        os.chdir(sys.argv[sys.argv.index("--chdir") + 1])
    if parent == "output":
        parent = os.environ["TRAINCTL_OUTPUT_DIR"]
    step, saved, acked = 0, set(), None
    while True:
        c = _read(control)
        if c.get("end"):
            print("training finished", flush=True)
            return 0
        if c.get("save") and c["save"] not in saved:
            c = _save(control, os.path.join(parent, f"checkpoint-{c['save']}"), c)
            saved.add(c["save"])
        step += 1
        print({"loss": f"{max(0.05, 2.0 * 0.99 ** step):.4f}", "learning_rate": 2e-4,
               "epoch": round(step / 1000, 3), "step": step}, flush=True)
        if acked != c.get("gen"):
            _ack(control, c.get("gen"))
            acked = c.get("gen")
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
