"""Packing token sequences into fixed blocks that remember where each example starts.

Examples are laid end to end; one that does not fit in what is left of a block is split, so every
block is full except the very last. Each block stores `seq_lengths` (the pieces it holds), from
which the collator rebuilds position ids that restart at every piece: the attention mask built
from them keeps packed examples from attending to each other, and no token is lost or repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class Packer:
    """Streams token lists in, full blocks out; holds at most one block in memory."""

    def __init__(self, block_size: int):
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.block_size = block_size
        self._ids: list[int] = []
        self._lengths: list[int] = []
        self.blocks = 0
        self.tokens = 0

    def add(self, ids: list[int]) -> Iterator[dict]:
        """Append one example; yield every block it completes."""
        pos = 0
        while pos < len(ids):
            room = self.block_size - len(self._ids)
            piece = ids[pos:pos + room]
            self._ids.extend(piece)
            self._lengths.append(len(piece))
            pos += len(piece)
            if len(self._ids) == self.block_size:
                yield self._emit()

    def flush(self) -> Iterator[dict]:
        """Yield the last, possibly partial, block."""
        if self._ids:
            yield self._emit()

    def _emit(self) -> dict:
        block = {"input_ids": self._ids, "seq_lengths": self._lengths}
        self.blocks += 1
        self.tokens += len(self._ids)
        self._ids, self._lengths = [], []
        return block


def pack_all(examples: Iterable[list[int]], block_size: int) -> Iterator[dict]:
    """Pack a whole stream (convenience for tests and benchmarks)."""
    packer = Packer(block_size)
    for ids in examples:
        yield from packer.add(ids)
    yield from packer.flush()


def position_ids(seq_lengths: list[int]) -> list[int]:
    """Position ids restarting at 0 for every piece of a block."""
    return [i for n in seq_lengths for i in range(n)]


def length_bucket(n: int) -> str:
    """Histogram bucket label for a token length: powers of two, e.g. '129-256'."""
    hi = 1
    while hi < n:
        hi *= 2
    return f"{hi // 2 + 1}-{hi}" if hi > 1 else "1"


def packed_efficiency(lengths: Iterable[int], block_size: int, batch_size: int) -> float:
    """Real tokens / tokens computed when packed blocks are batched (only the tail block is padded)."""
    total = sum(lengths)
    if total == 0:
        return 1.0
    blocks = -(-total // block_size)
    last = total - (blocks - 1) * block_size
    # Rows are padded to the longest row of their batch: the short tail block costs nothing extra
    # when it starts a batch of its own, else it is padded to a full block.
    alone = (blocks - 1) % batch_size == 0
    computed = (blocks - 1) * block_size + (last if alone else block_size)
    return total / computed


def padded_efficiency(lengths: Iterable[int], block_size: int, batch_size: int) -> float:
    """Real tokens / tokens computed for one-example-per-row batches padded to their longest row."""
    real = computed = 0
    batch: list[int] = []
    for n in lengths:
        batch.append(min(n, block_size))
        if len(batch) == batch_size:
            real, computed = real + sum(batch), computed + max(batch) * len(batch)
            batch = []
    if batch:
        real, computed = real + sum(batch), computed + max(batch) * len(batch)
    return real / computed if computed else 1.0
