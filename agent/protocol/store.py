"""The run store: one small interface over S3 and a local folder.

Keys are relative to the store root and use `/` separators (`<run-id>/logs/00000001.log`).
Values are bytes; JSON helpers sit on top. Markers and alert claims use `put_if_absent` and
`put_if_match`, which both backends make atomic (S3 conditional writes; exclusive link and a
lock file locally), so two writers never both win.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

DEFAULT_HOME_ENV = "TRAINCTL_HOME"
STORE_ENV = "TRAINCTL_STORE"


@dataclass(frozen=True)
class Versioned:
    """Bytes read together with the version tag needed for a later compare-and-set."""

    data: bytes
    etag: str


class Store(ABC):
    """What every backend offers. `url` round-trips through `open_store`."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, tags: dict[str, str] | None = None) -> None:
        """Write `data` at `key`, replacing it atomically (readers never see half a value).

        `tags` become S3 object tags (lifecycle rules expire by them); the local folder has none."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes at `key`, or None when absent."""

    @abstractmethod
    def get_versioned(self, key: str) -> Versioned | None:
        """The bytes and version tag at `key`, or None when absent."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if it does not exist. True if this call created it."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """Replace `key` only if its version is still `etag`. True if this call replaced it."""

    @abstractmethod
    def list(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        """Keys under `prefix` in sorted order, strictly after `start_after` when given."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        """Immediate child "folders" of `prefix` (names without the trailing slash), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing an absent key is not an error."""

    @abstractmethod
    def upload_file(self, key: str, path: str | os.PathLike) -> None:
        """Copy a local file into the store (large files go multipart on S3)."""

    @abstractmethod
    def download_file(self, key: str, path: str | os.PathLike) -> None:
        """Copy a stored object to a local file."""

    @abstractmethod
    def size_and_etag(self, key: str) -> tuple[int, str] | None:
        """(size in bytes, etag) of `key` without reading it, or None when absent."""

    def exists(self, key: str) -> bool:
        """Whether `key` is present."""
        return self.size_and_etag(key) is not None

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under `prefix`; returns how many were removed."""
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    def put_json(self, key: str, obj) -> None:
        """Write `obj` as JSON."""
        self.put(key, _dumps(obj))

    def get_json(self, key: str):
        """Read JSON at `key`; None when absent. Raises ValueError when not JSON."""
        raw = self.get(key)
        return None if raw is None else json.loads(raw)

    def console_url(self, prefix: str) -> str | None:
        """A link a human can open to browse `prefix` (S3 console), if the backend has one."""
        return None

    def location(self, key: str) -> str:
        """Where `key` lives, as a URL a user can copy (`s3://...` or `file://...`)."""
        return f"{self.url.rstrip('/')}/{key}"


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
