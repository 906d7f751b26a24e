"""Read, change, write back under compare-and-set: the one loop the alert ledger and the orphan scan share.

A watcher's records (`_alerts.json`, `_orphans/<region>/<instance-id>.json`) may be changed by
several watchers at once (two `ctl watch`, a Lambda overlapping itself). Each change is read
with its version tag and written back only if the object is still that version: the first
write of a key is create-only (`put_if_absent`), later ones `put_if_match`. A loser re-reads
and applies its change again to what the winner stored, so both changes land and neither
overwrites the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.protocol.errors import StoreError
from agent.protocol.store import Versioned

T = TypeVar("T")


@dataclass(frozen=True)
class Cell:
    """One store object as RunStore offers the watcher's records: read with its version tag, and
    written only if still at a version (`etag` None: create-only). `put` returns whether it won."""

    get: Callable[[], Versioned | None]
    put: Callable[[bytes, str | None], bool]


@dataclass
class Read(Generic[T]):
    """A value read from the store, the bytes it came from, and the version tag for the next write."""

    value: T
    etag: str | None  # None: nothing stored yet, so the next write is create-only
    data: bytes | None = None  # what `value` was decoded from (None when absent)


def read(cell: Cell, decode: Callable[[bytes | None], T]) -> Read[T]:
    """The cell's value (`decode(None)` when absent) with its bytes and version tag."""
    v = cell.get()
    return Read(decode(v.data if v else None), v.etag if v else None, v.data if v else None)


def update(cell: Cell, decode: Callable[[bytes | None], T], change: Callable[[T], T | None],
           encode: Callable[[T], bytes], *, first: Read[T] | None = None, attempts: int = 8,
           what: str = "record") -> tuple[T, bool]:
    """Apply `change` to the stored value under compare-and-set, re-reading after each lost race.

    `change` gets a freshly decoded copy (it may change it in place) and returns the value to
    store, or None for "nothing to write". `first` is a read the caller already made (saves a
    GET). Returns the value as stored afterwards and whether this call wrote it; a StoreError
    after `attempts` lost races in a row (the next sweep tries again).
    """
    cur = first if first is not None else read(cell, decode)
    for _ in range(attempts):
        new = change(decode(cur.data))  # a copy: `cur.value` stays what is stored
        if new is None:
            return cur.value, False
        if cell.put(encode(new), cur.etag):
            return new, True
        cur = read(cell, decode)  # lost the race: apply the change again to the winner's value
    raise StoreError(f"{what}: lost {attempts} compare-and-set races in a row; will retry next sweep")
