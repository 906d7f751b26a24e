"""The local-folder backend: the embedded default, and what the agent's spool looks like.

Atomicity without a server: every write goes to a temp file in the same folder and is then
renamed (replace) or hard-linked (create-only, which fails if the name exists). Compare-and-set
holds an flock on a sibling lock file while it checks and swaps.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import StoreError
from agent.protocol.store import Store, Versioned

_TMP_PREFIX = ".tmp-"
_LOCK_SUFFIX = ".lock~"


class LocalStore(Store):
    """A store rooted at a folder; keys map to files below it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise StoreError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    def _write_tmp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def put(self, key: str, data: bytes, tags: dict[str, str] | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, tmp_prefix=_TMP_PREFIX)  # the listing skips these temp names

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def get_versioned(self, key: str) -> Versioned | None:
        data = self.get(key)
        return None if data is None else Versioned(data, _etag(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + _LOCK_SUFFIX), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get(key)
            if current is None or _etag(current) != etag:
                return False
            self.put(key, data)
            return True

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        # Walk only the folder that holds the prefix, so listing one run's logs stays cheap.
        base_key, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*base_key.split("/")) if base_key else self.root
        if not base.is_dir():
            return
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel + "/"
            for name in filenames:
                if name.startswith(_TMP_PREFIX) or name.endswith(_LOCK_SUFFIX):
                    continue
                key = rel + name
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        yield from sorted(keys)

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        base = self.root.joinpath(*prefix.strip("/").split("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        yield from sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def upload_file(self, key: str, path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def download_file(self, key: str, path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise StoreError(f"{self.location(key)} does not exist")
        shutil.copyfile(src, path)

    def size_and_etag(self, key: str) -> tuple[int, str] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return path.stat().st_size, file_md5(path)


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_md5(path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in chunks (the single-part S3 ETag)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
