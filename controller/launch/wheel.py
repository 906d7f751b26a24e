"""Build trainctl's wheel locally, once per source state, for upload to the box.

The cache key is a hash of the package sources (not of the wheel file, whose bytes change with
every build's timestamps), so an unchanged tree reuses the cached wheel and the box skips the
reinstall. The build runs on a copy of the tree so it never writes build/ into the repo.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import ConfigError, TrainctlError
from controller.launch.hostkeys import trainctl_home
from controller.launch.plan import Wheel

PACKAGES = ("trainctl", "agent", "controller", "train", "ops", "infra")
_TOP_FILES = ("pyproject.toml", "README.md")
_SKIP_DIRS = {"__pycache__", ".terraform", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".part", ".tfstate", ".tfstate.backup", ".terraform.lock.hcl", ".log")


def source_root() -> Path | None:
    """The source tree this controller runs from, when it is one (has pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _source_files(root: Path) -> list[Path]:
    files = [root / f for f in _TOP_FILES if (root / f).is_file()]
    for pkg in PACKAGES:
        base = root / pkg
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and not (_SKIP_DIRS & set(p.relative_to(root).parts)) and not p.name.endswith(_SKIP_SUFFIXES):
                files.append(p)
    return sorted(files)


def source_key(root: Path) -> str:
    """Hash of every packaged source file's path and bytes."""
    h = hashlib.sha256()
    for p in _source_files(root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _requires(whl: Path) -> tuple[str, ...]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    return tuple(sorted(msg.get_all("Requires-Dist") or []))


def wheel_info(path: Path, key: str) -> Wheel:
    return Wheel(path=str(path), filename=path.name, key=key, requires=_requires(path))


def prebuilt(path: str) -> Wheel:
    """A wheel the user built; keyed by its bytes."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix != ".whl":
        raise ConfigError(f"setup.wheel {path!r} is not a wheel file")
    return wheel_info(p, hashlib.sha256(p.read_bytes()).hexdigest()[:20])


def build(say=print) -> Wheel:
    """The wheel for the current source tree, from the cache when the sources did not change."""
    root = source_root()
    if root is None:
        raise ConfigError("ctl is not running from a source tree, so it cannot build its wheel: "
                          "set setup.wheel to a trainctl wheel (pip wheel --no-deps <repo>)")
    key = source_key(root)
    out = trainctl_home() / "wheels" / key
    found = sorted(out.glob("trainctl-*.whl")) if out.is_dir() else []
    if found:
        return wheel_info(found[0], key)
    say(f"building trainctl wheel ({key[:12]})")
    with tempfile.TemporaryDirectory(prefix="trainctl-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for p in _source_files(root):
            dest = src / p.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
        staging = Path(tmp) / "out"
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(staging), str(src)], capture_output=True, text=True)
        wheels = sorted(staging.glob("trainctl-*.whl"))
        if r.returncode != 0 or not wheels:
            raise TrainctlError(f"building the trainctl wheel failed: {(r.stderr or r.stdout).strip()[-600:]}")
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheels[0].name
        write_atomic(final, wheels[0].read_bytes())
    return wheel_info(final, key)
