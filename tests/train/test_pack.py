"""Packing and collation: no token lost or repeated, boundaries kept, packed examples isolated."""

from __future__ import annotations

import random

import pytest

from train.data.pack import Packer, pack_all, packed_efficiency, padded_efficiency, position_ids
from train.sft.collate import IGNORE, collate_blocks, epoch_batches, steps_per_epoch


def _examples(seed: int, n: int, lo: int = 1, hi: int = 90):
    rng = random.Random(seed)
    start = 0
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        out.append(list(range(start, start + k)))  # distinct ids: any loss or repeat is visible
        start += k
    return out


@pytest.mark.parametrize("seed,block", [(0, 16), (1, 64), (2, 7), (3, 128)])
def test_blocks_keep_every_token_once_and_only_the_last_is_short(seed, block):
    examples = _examples(seed, 200)
    blocks = list(pack_all(examples, block))
    flat = [t for b in blocks for t in b["input_ids"]]
    assert flat == [t for e in examples for t in e]
    assert all(len(b["input_ids"]) == block for b in blocks[:-1])
    assert 0 < len(blocks[-1]["input_ids"]) <= block
    for b in blocks:
        assert sum(b["seq_lengths"]) == len(b["input_ids"])
        assert all(n > 0 for n in b["seq_lengths"])


def test_piece_boundaries_are_example_boundaries():
    examples = _examples(5, 60, 3, 40)
    ends = set()
    pos = 0
    for e in examples:
        pos += len(e)
        ends.add(pos)
    pos = 0
    for b in pack_all(examples, 32):
        for n in b["seq_lengths"]:
            pos += n
            # a piece ends where an example ends, or where a block ends (a split example)
            assert pos in ends or pos % 32 == 0
    assert pos == sum(len(e) for e in examples)


def test_packer_holds_at_most_one_block():
    p = Packer(8)
    emitted = list(p.add(list(range(30))))
    assert [len(b["input_ids"]) for b in emitted] == [8, 8, 8]
    assert len(p._ids) == 6
    assert [b["input_ids"] for b in p.flush()] == [list(range(24, 30))]


def test_collate_positions_restart_and_first_token_of_each_piece_is_unlabelled():
    rows = [{"input_ids": [5, 6, 7, 8, 9, 10], "seq_lengths": [2, 4]},
            {"input_ids": [11, 12, 13], "seq_lengths": [3]}]
    b = collate_blocks(rows, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2]]
    assert b["labels"].tolist() == [[IGNORE, 6, IGNORE, 8, 9, 10], [IGNORE, 12, 13, IGNORE, IGNORE, IGNORE]]
    assert position_ids([2, 4]) == [0, 1, 0, 1, 2, 3]


def test_packed_examples_do_not_attend_to_each_other(tiny_model):
    """The logits of example B are the same alone and packed after example A."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    a, b = [1, 40, 41, 42, 43, 44, 2], [1, 70, 71, 72, 73, 2]
    packed = collate_blocks([{"input_ids": a + b, "seq_lengths": [len(a), len(b)]}], pad_id=3)
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                         use_cache=False).logits[0, len(a):]  # as in training: no KV cache
        alone = model(input_ids=torch.tensor([b])).logits[0]
        leaky = model(input_ids=packed["input_ids"]).logits[0, len(a):]  # one causal sequence: B sees A
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)


def test_every_rank_gets_the_same_number_of_batches_and_all_rows_are_covered():
    per_rank = [epoch_batches(23, 2, epoch=1, seed=7, rank=r, world=3) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    seen = {i for batches in per_rank for b in batches for i in b}
    assert seen == set(range(23))
    assert epoch_batches(23, 2, 1, 7) == epoch_batches(23, 2, 1, 7)  # deterministic for resume
    assert epoch_batches(23, 2, 1, 7) != epoch_batches(23, 2, 2, 7)  # reshuffled each epoch
    assert steps_per_epoch(23, 2, 4) == 3
    assert steps_per_epoch(23, 2, 4, world=3) == 1


def test_packing_beats_padding_on_a_realistic_length_mix():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(5.0, 0.9)) + 1 for _ in range(5000)]
    packed = packed_efficiency(lengths, 512, 4)
    padded = padded_efficiency(lengths, 512, 4)
    assert packed >= 0.98
    assert padded < packed
    assert packed_efficiency([512, 512, 100], 512, 2) == pytest.approx(1124 / 1124)
    assert packed_efficiency([512, 512, 100], 512, 3) == pytest.approx(1124 / 1536)


def test_flattened_batches_compute_the_same_as_stacked_rows(tiny_model):
    """The one-row layout FlashAttention-2 needs: same logits per token as the [batch, block] layout."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    rows = [{"input_ids": [1, 40, 41, 2, 1, 50, 51, 52], "seq_lengths": [4, 4]},
            {"input_ids": [60, 61, 2, 1, 70, 71], "seq_lengths": [3, 3]}]
    stacked, flat = collate_blocks(rows, pad_id=3), collate_blocks(rows, pad_id=3, flatten=True)
    assert flat["input_ids"].shape == (1, 14)  # no padding at all
    assert flat["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    with torch.no_grad():
        a = model(input_ids=stacked["input_ids"], position_ids=stacked["position_ids"], use_cache=False).logits
        b = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits
    assert torch.allclose(torch.cat([a[0], a[1, :6]]), b[0], atol=1e-5)
    assert (flat["labels"] != IGNORE).sum() == (stacked["labels"] != IGNORE).sum()
