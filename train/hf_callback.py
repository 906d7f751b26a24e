"""A transformers `TrainerCallback` that reports exact progress to the trainctl agent.

Add it to an HF `Trainer` or TRL `SFTTrainer` with one line:

    trainer = Trainer(..., callbacks=[TrainctlCallback()])    # or trainer.add_callback(TrainctlCallback())

It imports only transformers and the standard library, so it can also be copied next to a script.
Outside the agent (no TRAINCTL_PROGRESS_FILE in the environment) it does nothing. Under the agent
it appends the JSON lines trainctl's own trainer writes: `{"step", "total_steps", "epoch", "loss",
"lr"}` per step, `{"phase": ...}` around evaluation and checkpoint saving, `{"eval_loss",
"eval_at_step"}`, and `{"artifact", "path", "final"}` for each `checkpoint-N` folder once it is
saved and for the final model when training ends (paths relative to TRAINCTL_OUTPUT_DIR when they
lie under it). The final model is declared at `on_train_end`, before a script's own
`trainer.save_model()`; the agent checks final artifacts after the script exits, so that save counts.
"""

from __future__ import annotations

import json
import os
import sys
import time

from transformers import TrainerCallback

CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR


def _num(v):
    """A plain float or int for JSON (tensors and numpy scalars have .item())."""
    if hasattr(v, "item"):
        v = v.item()
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


class TrainctlCallback(TrainerCallback):
    """Writes trainctl progress records from an HF Trainer run; a no-op outside the agent."""

    def __init__(self, final_dir: str | None = None, final_name: str = "model"):
        """`final_dir`: the folder the script saves its final model to (default: the Trainer's
        output_dir); `final_name`: the artifact's name in the store."""
        self.final_dir, self.final_name = final_dir, final_name
        self.path = os.environ.get("TRAINCTL_PROGRESS_FILE") or None
        self._training = False
        self._step_due: int | None = None  # a step whose record waits for its log (with the loss)
        self._phase_due: str | None = None  # the phase that follows that step

    def _emit(self, state, **fields) -> None:
        if not self.path or not state.is_world_process_zero:
            return
        record = {**fields, "ts": round(time.time(), 3)}
        try:
            with open(self.path, "a", encoding="utf-8") as fh:  # one whole line, synced: a crash never leaves half
                fh.write(json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # reporting must never stop the training it reports on
            print(f"TrainctlCallback: cannot write {self.path} ({exc}); progress reports stop here", file=sys.stderr)
            self.path = None

    def _step(self, state, **metrics) -> None:
        epoch = _num(state.epoch)
        self._emit(state, step=state.global_step, total_steps=state.max_steps,
                   epoch=round(epoch, 4) if epoch is not None else None, **metrics)

    def _settle(self, state) -> None:
        """Write a step whose log never came, then the phase that follows it."""
        if self._step_due is not None:
            self._step(state)
            self._step_due = None
        if self._phase_due is not None:
            self._emit(state, phase=self._phase_due)
            self._phase_due = None

    def _rel(self, path: str) -> str:
        """`path` relative to the agent's output dir when it lies under it, else absolute."""
        full = os.path.realpath(path)
        base = os.environ.get("TRAINCTL_OUTPUT_DIR")
        if base:
            base = os.path.realpath(base)
            if full == base or full.startswith(base + os.sep):
                return os.path.relpath(full, base)
        return full

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self._emit(state, phase="training")

    def on_step_end(self, args, state, control, **kwargs):
        self._settle(state)
        # The default flow callback ran first and decided what follows this step.
        following = "evaluating" if control.should_evaluate else "saving" if control.should_save else None
        if control.should_log:  # the log (with the loss) comes next and writes the step
            self._step_due, self._phase_due = state.global_step, following
            return
        self._step(state)
        if following:
            self._emit(state, phase=following)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs and self._step_due == state.global_step:
            loss, lr = _num(logs.get("loss")), _num(logs.get("learning_rate"))
            extra = {"grad_norm": _num(logs["grad_norm"])} if "grad_norm" in logs else {}
            self._step(state, loss=loss, lr=lr, **extra)
            self._step_due = None
        self._settle(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._settle(state)
        loss = _num((metrics or {}).get("eval_loss"))
        if loss is not None:
            self._emit(state, eval_loss=loss, eval_at_step=state.global_step)  # no "step": not a training step
        if self._training:
            self._emit(state, phase="saving" if control.should_save else "training")

    def on_save(self, args, state, control, **kwargs):
        self._settle(state)
        name = f"{CHECKPOINT_PREFIX}-{state.global_step}"
        folder = os.path.join(args.output_dir, name)
        if os.path.isdir(folder):
            self._emit(state, artifact=name, path=self._rel(folder) + "/", final=False)
        if self._training:
            self._emit(state, phase="training")

    def on_train_end(self, args, state, control, **kwargs):
        self._settle(state)
        self._training = False
        final = self.final_dir or args.output_dir
        self._emit(state, artifact=self.final_name, path=self._rel(final) + "/", final=True)

