"""The watcher Lambda's zip, built from the installed packages (no archive provider needed).

The Lambda runtime ships boto3; everything else the handler imports is pure Python and goes in
the zip: our `agent` and `ops` packages and `slack_sdk`. The zip is reproducible (sorted entries,
fixed timestamps), so an unchanged tree gives the same `source_code_hash` and Terraform does not
redeploy the function on every provision.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import ConfigError

HANDLER = "ops.lambda_handler.handler"
PACKAGES = ("agent", "ops", "slack_sdk")
_SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def package_dir(name: str) -> Path:
    """Where the importable package `name` lives."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {name!r} is not installed; install trainctl with its dependencies first")
    return Path(list(spec.submodule_search_locations)[0])


def _files(pkg: str) -> list[tuple[Path, str]]:
    root = package_dir(pkg)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if path.suffix in _SKIP_SUFFIXES:
                continue
            out.append((path, f"{pkg}/{path.relative_to(root).as_posix()}"))
    return out


def build_zip(dest: str | os.PathLike, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Write the watcher zip to `dest` (atomically) and return its path."""
    dest = Path(dest)
    entries = sorted((arc, path) for pkg in packages for path, arc in _files(pkg))
    handler_file = HANDLER.rsplit(".", 1)[0].replace(".", "/") + ".py"
    if handler_file not in {arc for arc, _ in entries}:
        raise ConfigError(f"{handler_file} is missing from the installed ops package: the Lambda would not start")
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arc, path in entries:
            info = zipfile.ZipInfo(arc, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    write_atomic(dest, buf.getvalue())
    return dest


def sha256_b64(path: str | os.PathLike) -> str:
    """Base64 SHA-256 of the file: what Terraform's filebase64sha256() and Lambda's CodeSha256 show."""
    import base64

    return base64.b64encode(hashlib.sha256(Path(path).read_bytes()).digest()).decode()
