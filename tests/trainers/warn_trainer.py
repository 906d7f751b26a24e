"""A stand-in trainer a test steers into (and out of) the conditions the watcher warns about.

By default it prints HF-Trainer-style log dicts (`{'loss': '2.0000', 'learning_rate': ..., 'epoch': ...,
'step': N}`, and `{'eval_loss': ...}` after a step), which the agent reads from its output; with
`--progress-file` it writes the same records to TRAINCTL_PROGRESS_FILE instead (our trainer's contract).
At every step it reads a JSON control file the test rewrites atomically:

- `loss`: the train loss to log, a number, or "falling" (2.0 x 0.99^step: never a spike);
- `hold` (progress-file mode): log one step at this loss, then steps without a loss until the control
  changes, so that loss stays the curve's latest point while the run still makes progress (not hung);
- `evals`: eval losses to log, one after each of the next steps, once per change of the control;
- `alloc_mb`: hold this many MB of real, touched memory (0 frees it);
- `end`: exit 0.

Once a change of the control is applied (its evals logged, its memory held) the trainer writes the
control's `gen` to `<control>.ack`, so a test waits on that event instead of on time.
"""

from __future__ import annotations

import json
import os
import sys
import time

PAGE = 4096


def _read(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}  # not written yet: carry on as before


def _touched(mb: int) -> bytearray:
    buf = bytearray(mb * 2 ** 20)  # zeroed pages are only resident once written
    for i in range(0, len(buf), PAGE):
        buf[i] = 1
    return buf


def _ack(path: str, gen) -> None:
    tmp = f"{path}.ack.tmp"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(gen))
    os.replace(tmp, f"{path}.ack")


class Log:
    """Where records go: printed HF-style, or appended to the progress file."""

    def __init__(self, progress_file: str | None):
        self.path = progress_file

    def __call__(self, rec: dict) -> None:
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        elif "eval_loss" in rec:
            print({"eval_loss": rec["eval_loss"], "eval_runtime": 0.1, "epoch": rec["epoch"]}, flush=True)
        elif "loss" in rec:
            print({"loss": f"{rec['loss']:.4f}", "learning_rate": rec["lr"], "epoch": rec["epoch"],
                   "step": rec["step"]}, flush=True)


def main() -> int:
    control = sys.argv[1]
    log = Log(os.environ["TRAINCTL_PROGRESS_FILE"] if "--progress-file" in sys.argv[2:] else None)
    step, seen, acked, held, evals, holding = 0, None, None, bytearray(), [], False
    log({"phase": "training"})
    while True:
        c = _read(control)
        if c.get("end"):
            print("training finished", flush=True)
            return 0
        if c.get("gen") != seen:  # a new instruction
            seen, evals, holding = c.get("gen"), list(c.get("evals") or []), False
            if len(held) != int(c.get("alloc_mb") or 0) * 2 ** 20:
                held = bytearray()  # free first: never hold the old and the new at once
                held = _touched(int(c.get("alloc_mb") or 0))
        step += 1
        epoch = round(step / 1000, 3)
        if holding:
            log({"step": step, "epoch": epoch})  # progress, not a point of the loss curve
        else:
            loss = c.get("loss", "falling")
            value = max(0.05, 2.0 * 0.99 ** step) if loss == "falling" else float(loss)
            log({"step": step, "loss": value, "lr": 2e-4, "epoch": epoch})
            if evals:
                log({"eval_loss": evals.pop(0), "epoch": epoch})
            holding = bool(c.get("hold")) and log.path is not None
        if not evals and acked != seen:
            _ack(control, seen)
            acked = seen
        time.sleep(0.1)  # a trainer's pace between logging steps


if __name__ == "__main__":
    sys.exit(main())
