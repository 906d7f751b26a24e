"""The one atomic file write: readers (and a crash) see the old content or the new, never half.

The bytes go to a temp file in the target's own folder (a rename across filesystems is not
atomic), the file is fsynced before the rename so the new name never points at unwritten
blocks, and the folder is fsynced after it so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_SUFFIX = ".tmp"


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int | None = None, *,
                 tmp_prefix: str = ".") -> None:
    """Replace `path` with `data` (str is written as UTF-8) so a crash leaves the old or the new file.

    `mode` is the new file's permission bits, set on the temp file before any byte lands (so a
    secret is never readable by others, not even briefly); None means the usual 0o666 less umask.
    Temp files are named `<tmp_prefix><name>.<random>.tmp` beside the target; one left by a crash
    is never mistaken for the target. On any error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f"{tmp_prefix}{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # exact bits, whatever the umask
        with os.fdopen(fd, "wb", closefd=True) as fh:
            fd = -1  # owned by fh now
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or create in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename has happened either way
    finally:
        os.close(dfd)
