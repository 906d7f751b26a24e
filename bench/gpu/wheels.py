"""The wheels the GPU check brings to a bare CUDA box, and which of them it unpacks there.

A lent GPU machine has CUDA PyTorch, transformers, peft and accelerate (so numpy, safetensors,
tokenizers, huggingface_hub, fsspec, psutil, pyyaml, packaging, filelock, tqdm ...), no network,
and none of bitsandbytes, datasets or boto3. What trainctl's box path (`ctl launch --local`, the
agent, `ctl train prepare/sft/estimate`, `ctl tail/status`) imports beyond that is listed in
SPECS, each with the reason. boto3/botocore (17 MB) are not needed with the local-folder store,
fabric/invoke are imported only for SSH boxes, rich and slack_sdk only by the watcher: measured
with those modules hidden from the import system.

`make gpu-wheels` (download): `pip download --no-deps --only-binary=:all:` of each spec, pinned to
the version in the project venv (the versions the test suite runs), for one Python version
(GPU_PY, default: the venv's) and manylinux x86_64; then each wheel is repacked without what the
box never loads (bitsandbytes' ROCm/XPU and pre-12.6 CUDA builds, pyarrow's Flight/S3/GCS/Azure/
HDFS/ORC libraries, tests and C++ headers, pandas' tests) with LZMA compression. Measured for
Python 3.11 (Dec 2026 versions): 114.1 MiB as published (pyarrow 52.5, bitsandbytes 41.1, pandas
11.8, cryptography 4.5, the other 15 wheels 4.2), 49.7 MiB trimmed (pyarrow 23.1, bitsandbytes 12.8,
pandas 6.8, cryptography 3.4, the rest 3.5): it fits in 60 MiB, the untrimmed set would not.
MANIFEST.json records each original wheel's size and sha256 and what was dropped.

On the box (install): a small resolver walks the requirements from the roots (trainctl's box
dependencies), takes what the machine already has when its version satisfies them, and unpacks
only the missing wheels into a folder that goes first on PYTHONPATH. No pip, no network.

Modules: this one downloads and trims the set (`make gpu-wheels`) and is the CLI; wheel_set.py says
what the set holds (ROOTS, SPECS, BOX_HAS); wheel_install.py resolves and unpacks it on the box.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.gpu.wheel_install import (
    Plan,
    bnb_cuda_override,
    folder_wheels,
    install,
    installed_versions,
    resolve,
    unpack,
    wheel_fits,
    wheel_requires,
)
from bench.gpu.wheel_set import BNB_DROP_DEFAULT, BOX_HAS, ROOTS, SPECS, Spec, canon, closure, wheel_name_version

# Every name wheels.py held before wheel_set.py and wheel_install.py: build.py, the check's setup and
# tests/bench read them as wheels.NAME.
__all__ = ["BNB_DROP_DEFAULT", "BOX_HAS", "DEFAULT_DEST", "MANIFEST", "PLATFORMS", "ROOTS", "SPECS", "Plan", "Spec",
           "bnb_cuda_override", "canon", "closure", "download", "folder_wheels", "install", "installed_versions", "main",
           "resolve", "size_table", "trim", "uncovered", "unpack", "venv_version", "wheel_fits", "wheel_name_version",
           "wheel_requires"]

HERE = Path(__file__).resolve().parent
DEFAULT_DEST = HERE / "wheels"
MANIFEST = "MANIFEST.json"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")


def trim(src: Path, dest: Path, drop: tuple[str, ...], compression=zipfile.ZIP_LZMA) -> tuple[int, list[str]]:
    """Repack a wheel without the members matching `drop` (RECORD updated); returns (size, dropped)."""
    pats = [re.compile(p) for p in drop]
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", compression) as zout:
        dropped = [i.filename for i in zin.infolist() if any(p.fullmatch(i.filename) for p in pats)]
        gone = set(dropped)
        for info in zin.infolist():
            if info.filename in gone:
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if line and line.split(",", 1)[0] not in gone).encode()
            out = zipfile.ZipInfo(info.filename, info.date_time)
            out.external_attr = info.external_attr
            out.compress_type = compression
            zout.writestr(out, data)
    os.replace(tmp, dest)
    return dest.stat().st_size, dropped


def venv_version(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def download(dest: Path, python_version: str, bnb_drop: str | None = None, say=print) -> list[dict]:
    """pip download each spec (pinned to this venv's version), trim it into `dest`, write MANIFEST.json."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        raw = Path(tmpdir)
        reqs = [f"{s.name}=={v}" if (v := venv_version(s.name)) else s.name for s in SPECS]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(raw)]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        say("$ pip download --no-deps --only-binary=:all: --python-version " + python_version + " " + " ".join(reqs))
        subprocess.run(cmd + reqs, check=True)
        files = {wheel_name_version(p.name)[0]: p for p in raw.glob("*.whl")}
        for spec in SPECS:
            src = files[canon(spec.name)]
            drop = tuple(bnb_drop if (p == BNB_DROP_DEFAULT and bnb_drop) else p for p in spec.drop)
            size, dropped = trim(src, dest / src.name, drop)
            rows.append({"file": src.name, "dist": canon(spec.name), "why": spec.why,
                         "original_bytes": src.stat().st_size, "bytes": size, "dropped_files": len(dropped),
                         "dropped": dropped, "original_sha256": hashlib.sha256(src.read_bytes()).hexdigest()})
    (dest / MANIFEST).write_text(json.dumps({"python_version": python_version, "platforms": list(PLATFORMS),
                                             "wheels": rows}, indent=2) + "\n")
    return rows


def size_table(rows: list[dict]) -> str:
    mib = 1024 * 1024
    lines = [f"{'wheel':<58} {'PyPI MiB':>9} {'here MiB':>9}  why"]
    for r in sorted(rows, key=lambda r: -r["bytes"]):
        lines.append(f"{r['file'][:58]:<58} {r['original_bytes'] / mib:9.2f} {r['bytes'] / mib:9.2f}  {r['why']}")
    total_o, total = sum(r["original_bytes"] for r in rows), sum(r["bytes"] for r in rows)
    lines.append(f"{'total':<58} {total_o / mib:9.2f} {total / mib:9.2f}")
    return "\n".join(lines)


def uncovered(rows_dir: Path, python_version: str, provided: set[str]) -> list[str]:
    """Requirements of the shipped wheels that neither another shipped wheel nor the box (`provided`) meets."""
    env = {"python_version": python_version, "python_full_version": python_version + ".0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    from packaging.requirements import Requirement

    wheels = folder_wheels(rows_dir)
    missing = []
    for name, (_, _, reqs) in sorted(wheels.items()):
        for r in reqs:
            req = Requirement(r)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            if canon(req.name) not in wheels and canon(req.name) not in provided:
                missing.append(f"{name} needs {req}")
    return missing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu.wheels", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="pip download + trim the wheel set (needs network)")
    d.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    d.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    d.add_argument("--bnb-drop", default=None, help=f"regex of bitsandbytes members to drop (default {BNB_DROP_DEFAULT})")
    s = sub.add_parser("size", help="print the wheel set's sizes from MANIFEST.json")
    s.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    a = ap.parse_args(argv)
    if a.cmd == "download":
        rows = download(a.dest, a.python_version, a.bnb_drop or None)
        print(size_table(rows))
        gaps = uncovered(a.dest, a.python_version, closure(BOX_HAS))
        for g in gaps:
            print(f"note: not shipped, expected on the box: {g}")
        return 0
    manifest = a.dest / MANIFEST
    if not manifest.is_file():
        print(f"no {manifest}: run `make gpu-wheels` first", file=sys.stderr)
        return 1
    print(size_table(json.loads(manifest.read_text())["wheels"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
