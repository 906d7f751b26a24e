"""Experiment tracking from our trainer, as HF's `report_to` does: `[train] report_to = ["tensorboard", "wandb"]`.

TensorBoard event files go to `<output_dir>/tensorboard/` (the run id as the run's folder name), so
a team's `tensorboard --logdir` shows our runs beside theirs. W&B gets the run id as the run's id
and name and the resolved train config as its config; its run folder (`wandb/offline-run-...` or
`wandb/run-...`) is kept under `<output_dir>/wandb/`, whatever WANDB_DIR says, so that the offline
run files can be `wandb sync`ed later. Both folders are declared as artifacts at the end, so they
land in the run store too. Both backends get the same scalars at the same steps, under HF's tag
names (`train/loss`, `train/learning_rate`, `eval/loss`).

Each package is an optional extra (`trainctl[tracking]` for tensorboard, `trainctl[wandb]`). When
one is missing, or W&B has no API key while it is meant to sync (WANDB_MODE neither `offline` nor
`disabled`), the run says so in one line at start and trains on without that backend, rather than
crashing later. Only rank 0 writes. The API key is never printed by us (the key check says only
whether there is one); what the trainer prints reaches the store through the agent, whose
redaction masks `WANDB_API_KEY=...` and `api_key: ...` shapes should anything else print one.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

FOLDER = "tensorboard"
WANDB_FOLDER = "wandb"
_OFFLINE_MODES = ("offline", "dryrun")  # `dryrun` is W&B's old word for offline
_writers: list = []  # the open writers of this process (rank 0), fed by log()


def start(report_to: list[str], out: Path, config: dict | None = None) -> list[str]:
    """Open a writer per configured backend (`config`: the resolved train config, for W&B); returns
    the backends that are really writing."""
    close()
    if os.environ.get("RANK", "0") != "0":
        return []
    run = os.environ.get("TRAINCTL_RUN_ID") or ""
    said = []
    for name in dict.fromkeys(report_to):  # train.schemas.TRACKERS: only these two pass validation
        opened = _open_tensorboard(out, run) if name == "tensorboard" else _open_wandb(out, run, config or {})
        if opened is not None:
            _writers.append(opened)
            said.append(f"{name} to {opened.where}")
    if said:
        print(f"report_to: writing {', '.join(said)}", flush=True)
    return [w.name for w in _writers]


def log(step: int, **metrics: float | None) -> None:
    """Scalars at `step` (`loss`, `learning_rate`, `eval_loss`, ...) to every open writer; None is skipped."""
    scalars = {_tag(key): value for key, value in metrics.items() if value is not None}
    for writer in _writers:
        writer.log(step, scalars)


def close() -> list[str]:
    """Flush and close every writer; the folders (relative to the output dir) that were written and
    are worth declaring as artifacts. Inside a `finally` that an exception is passing through, W&B
    records the run as failed (exit code 1, or the SystemExit's code)."""
    exc = sys.exc_info()[1]
    code = (exc.code if isinstance(exc.code, int) else 1) if isinstance(exc, SystemExit) else int(exc is not None)
    folders = []
    while _writers:
        writer = _writers.pop(0)
        if writer.close(code):
            folders.append(writer.folder)
    return folders


def _tag(key: str) -> str:
    """HF's tag names: `train/loss`, `train/learning_rate`, `eval/loss`."""
    return f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"


def _skip(name: str, why: str) -> None:
    print(f"report_to: {name} skipped, {why}", file=sys.stderr, flush=True)


class _TensorBoard:
    name, folder = "tensorboard", FOLDER

    def __init__(self, writer, where: Path):
        self.writer, self.where = writer, where

    def log(self, step: int, scalars: dict) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a run that dies still leaves what it logged on disk

    def close(self, _code: int) -> bool:
        self.writer.close()
        return True


def _open_tensorboard(out: Path, run: str) -> _TensorBoard | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _skip("tensorboard", "the tensorboard package is not installed (pip install 'trainctl[tracking]')")
        return None
    return _TensorBoard(SummaryWriter(log_dir=str(out / FOLDER / (run or "run"))), out / FOLDER)


class _WandB:
    name, folder = "wandb", WANDB_FOLDER

    def __init__(self, wandb, run, where: str):
        self.wandb, self.run, self.where = wandb, run, where

    def log(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)  # same step twice (last train step, final eval) = one row

    def close(self, code: int) -> bool:
        folder = Path(self.run.dir).parent  # <out>/wandb/<offline-run-...>, files/ is run.dir
        self.run.finish(exit_code=code)
        self.wandb.teardown()  # its service process ends now, not at our interpreter's exit
        return folder.is_dir()


def wandb_key_problem(env: dict | os._Environ = os.environ) -> str | None:
    """Why W&B would fail for want of an API key, or None: no WANDB_API_KEY and no netrc entry for
    the W&B host, while the mode is one that syncs (not offline or disabled)."""
    if env.get("WANDB_MODE", "").strip().lower() in (*_OFFLINE_MODES, "disabled") or env.get("WANDB_API_KEY"):
        return None
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:  # `wandb login` keeps the key in ~/.netrc (or $NETRC)
        if netrc.netrc(env.get("NETRC") or None).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return f"no API key for {host} (set WANDB_API_KEY, or WANDB_MODE=offline to keep the run files only)"


def _open_wandb(out: Path, run: str, config: dict) -> _WandB | None:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        _skip("wandb", "WANDB_MODE is disabled")
        return None
    try:
        import wandb
    except ImportError:
        _skip("wandb", "the wandb package is not installed (pip install 'trainctl[wandb]')")
        return None
    if why := wandb_key_problem():
        _skip("wandb", why)
        return None
    try:
        # dir=out: the run folder goes to <out>/wandb/ (the artifact). console off: our stdout is the
        # agent's log and progress stream, already in the store; git off: out is no repository.
        handle = wandb.init(project=os.environ.get("WANDB_PROJECT") or "trainctl", id=run or None,
                            name=run or None, config=config, dir=str(out), resume="allow",
                            settings=wandb.Settings(console="off", disable_git=True))
    except Exception as exc:  # any init failure (server unreachable, bad key): train on untracked, said once
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _skip("wandb", f"wandb.init failed: {first}")
        wandb.teardown()  # the service it started ends now
        return None
    return _WandB(wandb, handle, f"{out / WANDB_FOLDER}" + (" (offline)" if mode in _OFFLINE_MODES else ""))
