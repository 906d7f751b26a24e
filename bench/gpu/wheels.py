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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DEST = HERE / "wheels"
MANIFEST = "MANIFEST.json"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")

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


def wheel_fits(filename: str, tags) -> bool:
    """True when the wheel installs on an interpreter with these packaging tags."""
    from packaging.utils import parse_wheel_filename

    _, _, _, wtags = parse_wheel_filename(Path(filename).name)
    return bool(set(wtags) & set(tags))


# --- resolving: which wheels a box needs --------------------------------------------------------------

@dataclass
class Plan:
    install: dict[str, str] = field(default_factory=dict)  # canon name -> wheel file
    present: dict[str, str] = field(default_factory=dict)  # canon name -> installed version used
    unmet: list[str] = field(default_factory=list)  # "datasets needs huggingface-hub>=1.31 (have 0.30)"


def resolve(roots, installed: dict[str, str], wheels: dict[str, tuple[str, str, list[str]]],
            env: dict | None = None) -> Plan:
    """What to unpack so every requirement reachable from `roots` is met.

    installed: canon name -> version already on the machine; wheels: canon name -> (file, version,
    its Requires-Dist lines). A satisfied installed distribution is used as is (its own requirements
    are the machine's business); a missing or unsatisfying one is taken from the wheels when one
    satisfies the requirement, whose requirements are then followed. Markers are evaluated for
    `env` (default: this interpreter), extras never.
    """
    from packaging.requirements import Requirement

    plan = Plan()
    queue = [(Requirement(r), "trainctl") for r in roots]
    while queue:
        req, by = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({**(env or {}), "extra": ""}):
            continue
        name = canon(req.name)
        if name in plan.install:
            if not req.specifier.contains(wheels[name][1], prereleases=True):
                plan.unmet.append(f"{by} needs {req} (the wheel is {wheels[name][1]})")
            continue
        have = installed.get(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            plan.present[name] = have
            continue
        wheel = wheels.get(name)
        if wheel is not None and req.specifier.contains(wheel[1], prereleases=True):
            plan.install[name] = wheel[0]
            plan.present.pop(name, None)
            queue.extend((Requirement(r), name) for r in wheel[2])
            continue
        why = f"have {have}" if have is not None else "not installed"
        if wheel is not None:
            why += f", the wheel is {wheel[1]}"
        plan.unmet.append(f"{by} needs {req} ({why})")
    return plan


def wheel_requires(path: Path) -> list[str]:
    """Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def folder_wheels(folder: Path, tags=None) -> dict[str, tuple[str, str, list[str]]]:
    """The usable wheels in a folder: canon name -> (file, version, requirements)."""
    found = {}
    for p in sorted(Path(folder).glob("*.whl")):
        if tags is not None and not wheel_fits(p.name, tags):
            continue
        name, version = wheel_name_version(p.name)
        found[name] = (str(p), version, wheel_requires(p))
    return found


def installed_versions(skip_paths=()) -> dict[str, str]:
    """canon name -> version of every distribution this interpreter sees (outside skip_paths)."""
    import importlib.metadata as md

    skip = [str(Path(s).resolve()) for s in skip_paths]
    out = {}
    for dist in md.distributions():
        loc = str(getattr(dist, "_path", "") or "")
        if skip and any(loc.startswith(s) for s in skip):
            continue
        name = dist.metadata["Name"]
        if name and canon(name) not in out:
            out[canon(name)] = dist.version
    return out


def unpack(wheel: Path, site: Path) -> int:
    """Unpack one wheel into `site` as an installer would (its .data/purelib|platlib to the root)."""
    n = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            name = info.filename
            m = re.match(r"[^/]+\.data/(purelib|platlib|scripts|headers|data)/(.*)", name)
            if m:
                if m.group(1) not in ("purelib", "platlib"):
                    continue
                name = m.group(2)
            target = site / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                raise ValueError(f"{wheel.name}: unsafe member {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    return n


def install(folder: Path, site: Path, roots=ROOTS) -> Plan:
    """Unpack into `site` the wheels this interpreter lacks; returns the plan (unmet included)."""
    from packaging.tags import sys_tags

    tags = list(sys_tags())
    have = folder_wheels(folder)
    usable = folder_wheels(folder, tags)
    plan = resolve(roots, installed_versions(skip_paths=[site]), usable)
    wrong = sorted(set(have) - set(usable))
    for name in wrong:
        if any(line.startswith(f"trainctl needs {name}") or f" needs {name}" in line for line in plan.unmet):
            plan.unmet.append(f"{Path(have[name][0]).name} does not fit this interpreter "
                              f"(python {sys.version_info.major}.{sys.version_info.minor}); "
                              f"run `make gpu-wheels GPU_PY={sys.version_info.major}.{sys.version_info.minor}`")
    site.mkdir(parents=True, exist_ok=True)
    for file in plan.install.values():
        unpack(Path(file), site)
    return plan


def bnb_cuda_override(torch_cuda: str | None, libs) -> str | None:
    """BNB_CUDA_VERSION to set when bitsandbytes has no library for torch's CUDA version, else None.

    `libs` are the file names in the bitsandbytes package (libbitsandbytes_cuda128.so ...). Within one
    CUDA major version a library built for an older minor runs on a newer runtime, so the nearest
    older same-major build is chosen; across majors nothing is guessed.
    """
    if not torch_cuda:
        return None
    major, _, minor = torch_cuda.partition(".")
    want = f"{major}{minor.split('.')[0] or '0'}"
    have = sorted({m.group(1) for f in libs if (m := re.fullmatch(r"libbitsandbytes_cuda(\d+)\.(so|dll|dylib)", f))},
                  key=int)
    if want in have or not have:
        return None
    same = [v for v in have if v.startswith(major) and len(v) == len(want) and int(v) <= int(want)]
    return same[-1] if same else None


# --- downloading and trimming (make gpu-wheels) ------------------------------------------------------

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
