"""agent.protocol.atomic.write_atomic: new content or old, fsynced, never a half file or a stray temp."""

from __future__ import annotations

import os
import stat

import pytest

from agent.protocol import atomic
from agent.protocol.atomic import write_atomic


def _spy_fsync(monkeypatch, fail: bool = False) -> list[str]:
    """Record what each os.fsync call synced (the path its fd points at); optionally fail like a bad disk."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        if fail:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return seen


def test_writes_bytes_and_text_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, b"one")
    assert target.read_bytes() == b"one"
    write_atomic(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch):
    seen = _spy_fsync(monkeypatch)
    target = tmp_path / "agent.pid"
    write_atomic(target, "123\n")
    assert len(seen) == 2
    assert seen[0].startswith(str(tmp_path / ".agent.pid.")) and seen[0].endswith(".tmp")  # the data, before the rename
    assert seen[1] == str(tmp_path)  # the folder, after it: the rename is durable


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    _spy_fsync(monkeypatch, fail=True)
    with pytest.raises(OSError, match="Input/output error"):
        write_atomic(target, "new" * 1000)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nowhere" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "public", b"x", mode=0o644)
        write_atomic(tmp_path / "secret", b"x", mode=0o600)
        write_atomic(tmp_path / "plain", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o600  # 0o666 less the umask, as open() does


def test_tmp_prefix_names_the_temp_file(tmp_path, monkeypatch):
    seen = _spy_fsync(monkeypatch)
    write_atomic(tmp_path / "k", b"x", tmp_prefix=".tmp-")
    assert os.path.basename(seen[0]).startswith(".tmp-k.")
