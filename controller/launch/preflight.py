"""PURE: preflight from facts: every failure with its fix, and the steps that prepare the volume.

One pass lists everything wrong with the box (GPU, Python, the data volume, free space, the
store), so the user fixes it all at once. The data volume is mounted when attached but
unmounted, and formatted only when blkid calls it blank.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from controller.config import RunConfig
from controller.launch.facts import Facts
from controller.launch.plan import Step, privileged

q = shlex.quote


@dataclass(frozen=True)
class Problem:
    """A preflight failure and how to fix it."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}\n      fix: {self.fix}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


_NOT_VOLUMES = ("zram", "ram", "loop", "nbd", "sr")


def _mount_candidates(facts: Facts, device: str) -> list[dict]:
    """Attached disks with nothing mounted from them (and no partitions): the data volume."""
    out = []
    for d in facts.block_devices:
        if device and device not in (d.get("path"), d.get("name"), f"/dev/{d.get('name')}"):
            continue
        if str(d.get("name", "")).startswith(_NOT_VOLUMES) or not d.get("size"):
            continue  # compressed swap, ramdisks, loop/nbd images, empty slots: never the data volume
        if d.get("type") == "disk" and not d.get("children") and not d.get("mountpoint"):
            out.append(d)
    return out


_VENV_PROVIDES = {"python", "python3", "pip", "pip3", "ctl"}


def _setup_may_install(cfg: RunConfig, facts: Facts) -> bool:
    """Whether setup, still to run, may yet provide the trainer command (then it is not judged now)."""
    if cfg.setup.mode != "venv" or facts.venv_ready:
        return False
    return cfg.trainer.command[0] in _VENV_PROVIDES or bool(cfg.setup.pip_args or cfg.setup.commands)


def box_model_dir(cfg: RunConfig, model_path: str) -> str:
    """The model folder to list on the box: our trainer's model.path when it is an absolute path on
    the box that no stage target fills ("" otherwise: a staged prefix is checked in S3 before the
    launch, and a relative path is the run's workdir, which sft judges)."""
    from controller.box.stage import stage_targets

    if cfg.trainer.command or not cfg.trainer.config or not model_path.startswith("/"):
        return ""
    dests = {t["dest"].rstrip("/") for t in stage_targets(cfg.stage.model, cfg.stage.data, cfg.box.data_root)}
    return "" if model_path.rstrip("/") in dests else model_path


_MODEL_FIX = "copy the whole saved model folder there, or stage it from S3 (stage.model = \"s3://...\")"


def model_problem(facts: Facts, model_dir: str) -> Problem | None:
    """Why the model folder on the box cannot load (the same rules `ctl train sft` applies), else None."""
    from train.modelfolder import names_problem

    if not model_dir or facts.model_files is None:
        return None
    if not facts.model_dir_exists:
        return Problem(f"model.path {model_dir} does not exist on the box", _MODEL_FIX)
    if facts.model_error:
        return Problem(f"model.path {model_dir} cannot be read on the box: {facts.model_error}",
                       "make the folder readable by the login user (sudo chown -R), or stage it again")
    if why := names_problem(set(facts.model_files), f"model.path {model_dir} on the box", fix=""):
        return Problem(why.strip().rstrip(":"), _MODEL_FIX)
    if missing := facts.model_missing_shards:
        return Problem(f"model.path {model_dir} on the box lacks {len(missing)} weight shard(s) its index lists "
                       f"(first: {missing[0]})", _MODEL_FIX)
    return None


def _plan_mount(facts: Facts, cfg: RunConfig, box_needs_sudo: bool, problems: list[Problem],
                steps: list[Step]) -> bool:
    """Add the steps that format and mount the data volume, or the problem why not; True when mounting."""
    b, root = cfg.box, cfg.box.data_root
    if not b.require_mount or facts.data_root_mounted:
        return False
    mounting = False
    cands = _mount_candidates(facts, b.volume_device)
    if len(cands) == 1:
        d = cands[0]
        dev = d.get("path") or f"/dev/{d['name']}"
        if not d.get("fstype") and (d.get("pttype") or d.get("probe") != "blank"):
            why = f"partition table {d['pttype']}" if d.get("pttype") else (d.get("probe") or "not probed")
            problems.append(Problem(f"{dev} has no filesystem but is not blank ({why}); refusing to format it",
                                    "check the volume by hand (sudo blkid -p " + dev + "), or set "
                                    "box.volume_device to the right disk"))
        else:
            mounting = True
            if not d.get("fstype"):
                steps.append(Step(f"format blank volume {dev} (ext4)",
                                  privileged(f"mkfs.ext4 -q -L trainctl-data {q(dev)}", box_needs_sudo)))
            steps.append(Step(f"mount {dev} at {root}", privileged(f"mkdir -p {q(root)}", box_needs_sudo) + " && "
                                  + privileged(f"mount {q(dev)} {q(root)}", box_needs_sudo)))
    elif not cands:
        problems.append(Problem(f"no data volume is mounted at {root} and no unmounted volume is attached",
                                "attach the data volume (infra/ does), or set box.require_mount = false "
                                "and box.data_root to a folder with enough space"))
    else:
        names = ", ".join(c.get("path") or c["name"] for c in cands)
        problems.append(Problem(f"several unmounted volumes are attached ({names}); not guessing which to use",
                                "set box.volume_device to the data volume's device"))
    return mounting


def preflight(facts: Facts, cfg: RunConfig, box_needs_sudo: bool,
              model_dir: str = "") -> tuple[list[Problem], list[Step]]:
    """Every preflight failure with its fix, plus the steps that prepare the data volume;
    `model_dir` is the box folder our trainer will load (box_model_dir), "" for none."""
    problems: list[Problem] = []
    steps: list[Step] = []
    b, root = cfg.box, cfg.box.data_root
    if b.require_gpu and not facts.gpus:
        why = "nvidia-smi shows no GPU" if facts.nvidia_smi else "nvidia-smi is not installed"
        problems.append(Problem(f"no GPU visible ({why})",
                                "use a GPU instance with NVIDIA drivers (a Deep Learning AMI), or pass --allow-no-gpu"))
    if not facts.python:
        problems.append(Problem("python3 is not installed on the box", "use a Deep Learning AMI, or apt install python3"))
    elif tuple(facts.python[:2]) < _version(b.min_python)[:2]:
        problems.append(Problem(f"python3 on the box is {'.'.join(map(str, facts.python))}, need >= {b.min_python}",
                                "use a newer AMI, or point setup.python at a newer interpreter"))
    if cfg.setup.mode == "venv" or cfg.setup.python != "python3":
        if facts.seed is None:
            problems.append(Problem(f"setup.python {cfg.setup.python!r} does not run on the box",
                                    "set setup.python to an interpreter that exists there (DLAMI: its PyTorch python)"))
        elif tuple(facts.seed["version"][:2]) < _version(b.min_python)[:2]:
            problems.append(Problem(f"setup.python is Python {'.'.join(map(str, facts.seed['version']))}, "
                                    f"need >= {b.min_python}", "point setup.python at a newer interpreter"))
    if not facts.has_flock:
        problems.append(Problem("flock is missing on the box (needed for the per-box lock)", "apt install util-linux"))
    mounting = _plan_mount(facts, cfg, box_needs_sudo, problems, steps)
    if not mounting and facts.free_bytes < b.min_free_gb * 1e9:
        problems.append(Problem(f"only {facts.free_bytes / 1e9:.1f} GB free under {root}, the run needs "
                                f"{b.min_free_gb:g} GB", "free space on the volume, grow it, or lower box.min_free_gb"))
    if cfg.trainer.command and not facts.trainer_found and not _setup_may_install(cfg, facts):
        word = cfg.trainer.command[0]
        problems.append(Problem(f"the trainer command {word!r} is not on the box (not on PATH, not in the venv, not "
                                f"beside setup.python)", "fix [trainer] command (an absolute path works), or install "
                                "it with setup.pip_args / setup.commands"))
    if found := model_problem(facts, model_dir):
        problems.append(found)
    if not facts.store_reachable:
        problems.append(Problem(f"the run store is not reachable from the box ({facts.store_error or 'no route'})",
                                "allow HTTPS egress (or add an S3 VPC endpoint), and check store.endpoint_url"))
    return problems, steps
