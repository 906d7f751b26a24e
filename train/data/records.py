"""Record-level rules: what counts as a usable text, global dedupe, and the train/val split.

The split is a function of the content hash and the seed only, so re-reading the sources (in a
different order, with a file added) never moves an example from train to val. Dedupe keeps its
hashes in an on-disk SQLite table, so memory does not grow with the number of records.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from train.schemas import ValidationConfig


def content_hash(text: str) -> bytes:
    """The dedupe key: exact text, ignoring surrounding whitespace."""
    return hashlib.blake2b(text.strip().encode("utf-8"), digest_size=16).digest()


def is_val(h: bytes, seed: int, val_fraction: float) -> bool:
    """Deterministic split: seeded hash of the content, stable across re-reads."""
    if val_fraction <= 0:
        return False
    draw = int.from_bytes(hashlib.blake2b(h, digest_size=8, key=str(seed).encode()).digest(), "big")
    return draw / 2**64 < val_fraction


def record_text(value, whole_text: bool, cfg: ValidationConfig, text_field: str, render_chat=None):
    """(text without surrounding whitespace, "") for a usable record, else (None, reason)."""
    if whole_text:
        text = value
    elif not isinstance(value, dict):
        return None, "not_an_object"
    elif cfg.format == "chat":
        msgs = value.get(cfg.messages_field)
        if msgs is None:
            return None, "missing_field"
        ok = isinstance(msgs, list) and msgs and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs)
        if not ok:
            return None, "bad_messages"
        text = render_chat(msgs)
    else:
        if text_field not in value:
            return None, "missing_field"
        text = value[text_field]
        if not isinstance(text, str):
            return None, "not_a_string"
    text = text.strip()  # the kept copy of a duplicate must not depend on which was read first
    if not text:
        return None, "empty_text"
    if len(text) < cfg.min_chars:
        return None, "too_short"
    return text, ""


class Deduper:
    """Exact-content dedupe across all sources, backed by SQLite on disk (bounded RAM)."""

    def __init__(self, path: Path):
        # Used from the prefetch thread, closed from the main one after that thread has finished.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA cache_size=-16384")  # 16 MiB page cache, whatever the input size
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (h BLOB PRIMARY KEY) WITHOUT ROWID")
        self._db.execute("BEGIN")

    def first_time(self, h: bytes) -> bool:
        """True the first time a hash is seen, False for every repeat."""
        return self._db.execute("INSERT OR IGNORE INTO seen VALUES (?)", (h,)).rowcount == 1

    def close(self) -> None:
        self._db.execute("COMMIT")
        self._db.close()


@dataclass
class SourceStats:
    """Counts for one source, as they appear in the report."""

    files_listed: int = 0
    files_excluded: int = 0
    files_over_max: int = 0
    files_read: int = 0
    records: int = 0
    accepted: int = 0
    duplicates: int = 0
    train: int = 0
    val: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "rejected"}
        d["rejected"] = dict(sorted(self.rejected.items()))
        d["rejected_total"] = sum(self.rejected.values())
        return d
