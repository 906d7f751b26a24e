"""Which store a URL names: `s3://bucket/prefix`, `file:///path` or a folder (the embedded default)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from agent.protocol.errors import ConfigError
from agent.protocol.store import DEFAULT_HOME_ENV, STORE_ENV, Store


def default_store_url() -> str:
    """The embedded default: a local folder under $TRAINCTL_HOME (default ~/.trainctl)."""
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    home = os.environ.get(DEFAULT_HOME_ENV) or str(Path.home() / ".trainctl")
    return str(Path(home) / "runs")


def open_store(url: str | None = None, *, endpoint_url: str | None = None, region: str | None = None,
               profile: str | None = None) -> Store:
    """Open the store a URL names: `s3://bucket/prefix`, `file:///path` or a bare path."""
    url = url or default_store_url()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"store URL {url!r} has no bucket: use s3://bucket/prefix")
        from agent.protocol.store_s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"), endpoint_url=endpoint_url,
                       region=region, profile=profile)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URL {url!r}: file URLs need three slashes, e.g. file:///srv/runs")
        path = parsed.path
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = url
    else:
        raise ConfigError(f"unsupported store URL {url!r}: use s3://bucket/prefix, file:///path or a folder path")
    from agent.protocol.store_local import LocalStore

    return LocalStore(path)
