"""What the GPU check's wheel set holds (bench/gpu/wheels.py fetches and trims it, wheel_install.py unpacks it).

ROOTS: trainctl's box dependencies, where the box's resolver starts; SPECS: each wheel shipped,
why, and the archive members trimmed from it (BNB_DROP_DEFAULT: bitsandbytes' builds a 2025+ CUDA
PyTorch never picks); BOX_HAS and `closure`: what a CUDA PyTorch machine already brings. And the
name helpers both sides use (`canon`, `wheel_name_version`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# What trainctl's box path needs (pyproject.toml: dependencies and the train extra), as requirements.
# The resolver starts here; tests/bench checks each name still appears in pyproject.toml.
ROOTS = ("click>=8.1", "paramiko>=3.4", "watchdog>=4", "psutil>=5.9", "torch>=2.4", "transformers>=4.46",
         "peft>=0.13", "bitsandbytes>=0.45", "datasets>=3.0", "accelerate>=1.0", "tokenizers>=0.20")

# The CUDA builds bitsandbytes may pick on a 2025+ CUDA PyTorch (torch.version.cuda 12.6 .. 13.x).
# `make gpu-wheels GPU_BNB_DROP=...` changes the regex when the box's torch is older.
BNB_DROP_DEFAULT = r"bitsandbytes/libbitsandbytes_(rocm|xpu|cuda11|cuda12[0-5]).*"
_PYARROW_DROP = (r"pyarrow/(tests|include|src)/.*", r"pyarrow/.*flight.*", r"pyarrow/libarrow_s3\..*",
                 r"pyarrow/_s3fs\..*", r"pyarrow/_gcsfs\..*", r"pyarrow/_azurefs\..*", r"pyarrow/_hdfs\..*",
                 r"pyarrow/.*_orc\..*", r"pyarrow/_pyarrow_cpp_tests\..*",
                 # unversioned and full-version copies of libs only C++ builds link against (a wheel has no symlinks)
                 r"pyarrow/libarrow_python(_parquet_encryption)?\.so(\.\d+\.\d+\.\d+)?")


@dataclass(frozen=True)
class Spec:
    name: str
    why: str
    drop: tuple[str, ...] = ()  # regexes (full match) of archive members left out


SPECS: tuple[Spec, ...] = (
    Spec("bitsandbytes", "NF4 4-bit loading and paged 8-bit AdamW (the point of the check)", (BNB_DROP_DEFAULT,)),
    Spec("datasets", "ctl train prepare writes, ctl train sft memory-maps the packed Arrow blocks"),
    Spec("pyarrow", "datasets' storage", _PYARROW_DROP),
    Spec("pandas", "imported by datasets at import time", (r"pandas/tests/.*",)),
    Spec("python-dateutil", "pandas"),
    Spec("six", "python-dateutil"),
    Spec("dill", "datasets"),
    Spec("multiprocess", "datasets"),
    Spec("xxhash", "datasets"),
    Spec("fsspec", "datasets pins a range; shipped in case the box's is outside it"),
    Spec("click", "the ctl CLI"),
    Spec("watchdog", "the agent's file watcher"),
    Spec("paramiko", "controller host keys, imported by ctl launch even with --local"),
    Spec("invoke", "paramiko's metadata requires it (imported only for SSH boxes)"),
    Spec("cryptography", "paramiko"),
    Spec("bcrypt", "paramiko"),
    Spec("pynacl", "paramiko"),
    Spec("cffi", "pynacl, bcrypt"),
    Spec("pycparser", "cffi"),
)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_version(filename: str) -> tuple[str, str]:
    """('pyarrow', '26.0.1') from 'pyarrow-26.0.1-cp311-cp311-manylinux_2_28_x86_64.whl'."""
    parts = Path(filename).name[:-4].split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename}")
    return canon(parts[0]), parts[1]


# What a CUDA PyTorch + transformers + peft + accelerate machine brings: their requirement closure,
# read from this venv's metadata at download time (an approximation of the box, printed as such).
BOX_HAS = ("torch", "transformers", "peft", "accelerate")


def closure(names) -> set[str]:
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    stack = list(names)
    while stack:
        n = canon(stack.pop())
        if n in seen:
            continue
        try:
            dist = md.distribution(n)
        except md.PackageNotFoundError:
            continue
        seen.add(n)
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen
