"""The GPU check's wheels on the box: which of them to unpack, and unpacking them (no pip, no network).

A small resolver walks the requirements from ROOTS (bench/gpu/wheel_set.py), takes what the machine
already has when its version satisfies them, and unpacks only the missing wheels that fit this
interpreter into a folder that goes first on PYTHONPATH (`install`, called by the check's setup).
`bnb_cuda_override` says which BNB_CUDA_VERSION to set when bitsandbytes has no build for torch's CUDA.
"""

from __future__ import annotations

import re
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu.wheel_set import ROOTS, canon, wheel_name_version


def wheel_fits(filename: str, tags) -> bool:
    """True when the wheel installs on an interpreter with these packaging tags."""
    from packaging.utils import parse_wheel_filename

    _, _, _, wtags = parse_wheel_filename(Path(filename).name)
    return bool(set(wtags) & set(tags))


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
