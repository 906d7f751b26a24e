"""Turning packed blocks into model inputs, and the deterministic order they are fed in.

No attention mask is passed: position ids that restart at every packed piece make transformers
build a block-diagonal causal mask (SDPA/eager) or varlen sequence boundaries (FlashAttention-2),
so packed examples never see each other. Only the final, short block is ever padded, and its
padding is a separate piece with labels -100.
"""

from __future__ import annotations

IGNORE = -100


def collate_blocks(rows: list[dict], pad_id: int, flatten: bool = False):
    """Stack packed rows into input_ids/position_ids/labels of shape [batch, longest row], or, with
    `flatten`, lay them end to end in one row [1, total] with no padding at all: FlashAttention-2
    only reads sequence boundaries from position ids when the batch is a single row."""
    import torch

    if flatten:
        rows = [{"input_ids": [t for r in rows for t in r["input_ids"]],
                 "seq_lengths": [n for r in rows for n in r["seq_lengths"]]}]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        row = torch.tensor(r["input_ids"], dtype=torch.long)
        ids[i, :n] = row
        labels[i, :n] = row
        start = 0
        for length in r["seq_lengths"]:
            pos[i, start:start + length] = torch.arange(length)
            labels[i, start] = IGNORE  # never learn to predict one piece's first token from the previous piece
            start += length
        if n < width:
            pos[i, n:] = torch.arange(width - n)  # padding forms its own piece, invisible to real tokens
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def real_tokens(batch) -> int:
    """Tokens that carry a label (what tokens/s counts)."""
    return int((batch["labels"] != IGNORE).sum())


def epoch_batches(n_rows: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's micro-batches of row indices for one epoch: a seeded shuffle, the same on every
    rank, dealt round-robin; padded by wrapping so every rank takes the same number of steps."""
    import torch

    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n_rows, generator=g).tolist() if n_rows else []
    per_rank = -(-len(order) // world) if order else 0
    order += order[: per_rank * world - len(order)]
    mine = order[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    """Optimizer steps in one epoch (a short last accumulation group still makes a step)."""
    per_rank = -(-n_rows // world)
    micro = -(-per_rank // batch_size)
    return -(-micro // grad_accum)
