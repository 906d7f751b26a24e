"""Uploads declared artifacts under `artifacts/<name>/...` and proves they arrived intact.

`sync_artifact` is idempotent: a file whose stored size and ETag already match the local copy is
not sent again, so it serves both when the trainer declares an artifact and as the final check
before `_complete` (and after an agent restart). Large files go through the store's managed
multipart upload; their ETag is checked against the multipart digest computed locally.
"""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.protocol.errors import StoreError
from agent.protocol.runstore import RunStore

log = logging.getLogger("trainctl.agent")

# boto3's managed transfer defaults: files from 8 MiB up go multipart in 8 MiB parts.
MULTIPART_CHUNK = 8 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ArtifactError(Exception):
    """A declared artifact that is missing locally or did not arrive intact in the store."""

    def __init__(self, message: str, missing: bool = False, absent: bool = False):
        super().__init__(message)
        self.missing = missing or absent
        self.absent = absent  # nothing there at all (not a broken file): cause artifact_missing


@dataclass
class Uploaded:
    """A verified artifact: where it is, how big, how many files."""

    name: str
    uri: str
    size: int
    files: int
    final: bool
    sent: int = 0  # files actually uploaded by this call (0 = everything already verified)

    def to_dict(self) -> dict:
        return {"name": self.name, "uri": self.uri, "size": self.size, "files": self.files, "final": self.final}


def _local_files(output_dir: Path, name: str, relpath: str,
                 exclude: tuple[Path, ...] = ()) -> tuple[Path, list[tuple[str, Path]]]:
    """The files of one artifact. A relative path must stay inside the output dir; an absolute one
    is taken as the run declared it (run.toml `[trainer] artifacts`, `--artifact`, the callback).
    Folders in `exclude` (checkpoints stored as artifacts of their own) are left out."""
    if not _NAME.match(name):
        raise ArtifactError(f"artifact {name!r} is not a plain name (letters, digits, _ . -)")
    base = output_dir.resolve()
    if Path(relpath).is_absolute():
        src = Path(relpath).resolve()
    else:
        src = (base / relpath).resolve()
        if src != base and base not in src.parents:
            raise ArtifactError(f"artifact {name}: path {relpath!r} is outside the output dir {base}", missing=True)
    if src.is_file():
        return src, [(src.name, src)]
    if not src.is_dir():
        raise ArtifactError(f"artifact {name}: {src} does not exist", absent=True)
    skip = {x.resolve() for x in exclude} - {src}
    files = []
    for f in sorted(src.rglob("*")):
        if f.is_dir() or (skip and any(d in f.parents for d in skip)):
            continue
        if not f.is_file():  # dangling symlink, socket, fifo: the artifact is not whole
            raise ArtifactError(f"artifact {name}: {f} is not a readable regular file", missing=True)
        files.append((f.relative_to(src).as_posix(), f))
    if not files:
        raise ArtifactError(f"artifact {name}: {src} is an empty folder", absent=True)
    return src, files


def expected_etags(path: Path, chunk: int = MULTIPART_CHUNK) -> tuple[str, str]:
    """(plain MD5, multipart ETag) of a local file, to compare with what the store reports."""
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            whole.update(block)
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    multi = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
    return whole.hexdigest(), multi


def _matches(rs: RunStore, key: str, path: Path) -> bool:
    got = rs.artifact_size_and_etag(key)
    if got is None or got[0] != path.stat().st_size:
        return False
    md5, multi = expected_etags(path)
    return got[1] in (md5, multi)


def sync_artifact(rs: RunStore, run_id: str, output_dir: Path, name: str, relpath: str,
                  final: bool = False, exclude: tuple[Path, ...] = ()) -> Uploaded:
    """Make `artifacts/<name>/` hold an exact copy of the declared file or folder (less the folders
    in `exclude`), and verify it."""
    _src, files = _local_files(output_dir, name, relpath, exclude)
    total = sent = 0
    for rel, path in files:
        key = rs.artifact_key(run_id, f"{name}/{rel}")
        try:
            if not _matches(rs, key, path):
                rs.upload_artifact(key, path)
                sent += 1
                if not _matches(rs, key, path):
                    raise ArtifactError(f"artifact {name}: {rel} in the store does not match the local file "
                                        "(size or checksum differs after upload)")
            total += path.stat().st_size
        except (OSError, StoreError) as exc:
            if path.exists():
                raise  # the store's fault (or a transient one): the caller retries
            # The trainer deleted it meanwhile (e.g. checkpoint rotation by save_total_limit).
            raise ArtifactError(f"artifact {name}: {path} vanished during upload", missing=True) from exc
    uri = rs.artifact_location(run_id, f"{name}/")
    return Uploaded(name, uri, total, len(files), final, sent)


class ArtifactQueue:
    """Uploads declared artifacts one at a time on a worker thread, so a multi-GB checkpoint does not
    stall heartbeats and log shipping. Declarations are handled in order; a store error is re-raised
    by `pump` (the caller backs off) and the same declaration is tried again."""

    def __init__(self, rs: RunStore, run_id: str, output_dir: Path, exclude=lambda: ()):
        """`exclude()`: the folders stored as artifacts of their own (checkpoints), left out of a
        final artifact that contains them, so they are not uploaded twice."""
        self.rs, self.run_id, self.output_dir, self.exclude = rs, run_id, output_dir, exclude
        self.uploaded: dict[str, Uploaded] = {}
        self.errors: dict[str, str] = {}
        self.done = 0  # declarations handled so far
        self._job: Future | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="artifact-upload")

    @property
    def busy(self) -> bool:
        return self._job is not None

    def pump(self, declared: list) -> bool:
        """Collect a finished upload and start the next one. True when an upload's outcome was collected
        (the store answered); False when one is still running or nothing was due."""
        collected = False
        if self._job is not None:
            if not self._job.done():
                return False
            job, self._job = self._job, None
            d = declared[self.done]
            try:
                up = job.result()
                self.uploaded[d.name] = up
                self.errors.pop(d.name, None)
                log.info("artifact %s verified in the store (%d files, %d bytes)", d.name, up.files, up.size)
            except ArtifactError as exc:
                self.errors[d.name] = str(exc)
                log.warning("%s", exc)
            self.done += 1  # not reached on a store error: the same declaration goes again
            collected = True
        if self.done < len(declared):
            d = declared[self.done]
            self._job = self._pool.submit(sync_artifact, self.rs, self.run_id, self.output_dir, d.name, d.path,
                                          d.final, tuple(self.exclude()) if d.final else ())
        return collected

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
