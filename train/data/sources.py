"""Reading data sources (local folders and s3:// prefixes) one record at a time.

Nothing here holds more than one file's worth of data: JSONL is streamed line by line (S3 bodies
too), so memory stays flat however many files a source has. Every record that cannot be used is
yielded as a rejection with a reason; the caller counts and writes them, none are dropped.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from agent.protocol.errors import ConfigError, TrainctlError
from train.schemas import SourceConfig

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".txt": "txt", ".pdf": "pdf"}


@dataclass
class Item:
    """One record read from a file: a raw value to validate, or a rejection reason already known."""

    file: str
    line: int
    value: object = None
    reason: str = ""
    excerpt: str = ""
    whole_text: bool = False  # a TXT/PDF file: `value` is the text itself, not a record


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """`**/` spans folders (including none), `*` and `?` stay inside one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def selected(rel: str, include: list[str], exclude: list[str]) -> bool:
    """Whether a file (path relative to its source root) passes the include/exclude globs."""
    if include and not any(glob_regex(p).match(rel) for p in include):
        return False
    return not any(glob_regex(p).match(rel) for p in exclude)


def s3_client():
    """boto3 S3 client with standard retries; the endpoint comes from AWS_ENDPOINT_URL/TRAINCTL_S3_ENDPOINT."""
    import os

    return _client(os.environ.get("TRAINCTL_S3_ENDPOINT") or None)


@lru_cache(maxsize=4)
def _client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"mode": "standard", "max_attempts": 5}))


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"{url}: an s3 source needs a bucket, e.g. s3://bucket/prefix/")
    return bucket, prefix


def list_files(src: SourceConfig) -> Iterator[tuple[str, str]]:
    """(relative path, locator) for every file under the source, in sorted order."""
    if src.path.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = split_s3(src.path)
        try:
            pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:  # S3 lists keys in UTF-8 binary order already
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield obj["Key"][len(prefix):].lstrip("/"), f"s3://{bucket}/{obj['Key']}"
        except (ClientError, BotoCoreError) as exc:  # the code (AccessDenied, NoSuchBucket...) is the useful part
            raise TrainctlError(f"source {src.name!r}: cannot list {src.path}: {exc}") from None
        return
    root = Path(src.path).expanduser()
    if root.is_file():
        yield root.name, str(root)
        return
    if not root.is_dir():
        raise ConfigError(f"source {src.name!r}: {root} does not exist")
    for p in sorted(root.rglob("*")):
        if p.is_file():
            yield p.relative_to(root).as_posix(), str(p)


def _open_bytes(locator: str) -> io.BufferedIOBase:
    """A readable binary file; S3 objects go through a managed download into a temp file on disk
    (bounded memory, multipart for big objects), then read like local files."""
    if locator.startswith("s3://"):
        import tempfile

        bucket, key = split_s3(locator)
        tmp = tempfile.TemporaryFile()
        s3_client().download_fileobj(bucket, key, tmp)
        tmp.seek(0)
        return tmp
    return open(locator, "rb")  # noqa: SIM115 - closed by the caller


def _excerpt(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:200]


def read_items(rel: str, locator: str, pdf_max_pages: int) -> Iterator[Item]:
    """Yield the records of one file; undecodable parts become rejections with a reason."""
    kind = FORMATS.get(Path(rel).suffix.lower())
    if kind is None:
        yield Item(rel, 0, reason="unsupported_format", excerpt=Path(rel).suffix)
        return
    if kind == "pdf":
        yield from _read_pdf(rel, locator, pdf_max_pages)
        return
    try:
        fh = _open_bytes(locator)
    except Exception as exc:  # noqa: BLE001 - a vanished or forbidden object is one rejected file, not a crash
        yield Item(rel, 0, reason="unreadable", excerpt=str(exc)[:200])
        return
    with fh:
        if kind == "jsonl":
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    yield Item(rel, n, json.loads(raw))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield Item(rel, n, reason="malformed_json", excerpt=_excerpt(raw))
            return
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        yield Item(rel, 0, reason="not_utf8", excerpt=_excerpt(data))
        return
    if kind == "txt":
        yield Item(rel, 0, text, whole_text=True)
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        yield Item(rel, 0, reason="malformed_json", excerpt=_excerpt(text))
        return
    for n, value in enumerate(doc if isinstance(doc, list) else [doc], 1):
        yield Item(rel, n, value)


def _read_pdf(rel: str, locator: str, max_pages: int) -> Iterator[Item]:
    try:
        import pypdf
    except ImportError:
        yield Item(rel, 0, reason="pdf_needs_pypdf", excerpt="pip install pypdf to read PDF sources")
        return
    try:
        with _open_bytes(locator) as fh:
            reader = pypdf.PdfReader(io.BytesIO(fh.read()))
            text = "\n".join((p.extract_text() or "") for p in reader.pages[:max_pages])
    except Exception as exc:  # pypdf raises many types on damaged files; the record is rejected, not fatal
        yield Item(rel, 0, reason="pdf_unreadable", excerpt=str(exc)[:200])
        return
    yield Item(rel, 0, text, whole_text=True)
