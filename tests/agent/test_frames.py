"""Carriage-return updates folded to their last frame, whole and streamed in any split."""

from __future__ import annotations

import random

import pytest

from agent.daemon.frames import FrameFolder, fold_frames, last_frame

BAR = "\u2588" * 10
CASES = [  # (text, folded)
    ("a\rb\rc\n", "c\n"),
    ("plain\nlines\n", "plain\nlines\n"),
    ("windows\r\nline ends\r\n", "windows\nline ends\n"),
    (f"\r  0%|          | 0/3 [00:00<?, ?it/s]\r 33%|{BAR[:3]}| 1/3\r{' ' * 20}\r{{'loss': '1.5'}}\n",
     "{'loss': '1.5'}\n"),  # tqdm.write: wipe the bar, print the message
    (f"\r 33%| 1/3\r 67%| 2/3\r100%|{BAR}| 3/3\n", f"100%|{BAR}| 3/3\n"),
    ("keep this\r     \n", "keep this\n"),  # a frame of spaces is a wipe, not what the line says
    ("\r\r\n", "\n"),
    ("a\rb\nc\rd", "b\nd"),  # an unterminated last line is folded too
    ("é✓ one\ré✓ two\n", "é✓ two\n"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "folded"), CASES)
def test_fold_frames_str_and_bytes(text, folded):
    assert fold_frames(text) == folded
    assert fold_frames(text.encode()) == folded.encode()


def test_last_frame():
    assert last_frame("x\ry\r") == "y"
    assert last_frame("   ") == "   "
    assert last_frame(b"\r\r") == b""


def _stream(folder: FrameFolder, pieces) -> tuple:
    out = folder._empty.join(folder.feed(p) for p in pieces)
    return out, folder.flush()


@pytest.mark.parametrize(("text", "folded"), CASES)
def test_streamed_in_any_split_matches_the_whole(text, folded):
    body, _, tail = folded.rpartition("\n")
    complete = body + "\n" if "\n" in folded else ""
    for cut in range(len(text) + 1):
        assert _stream(FrameFolder(), [text[:cut], text[cut:]]) == (complete, tail), cut
    data = text.encode()
    for cut in range(len(data) + 1):  # bytes, cut anywhere (inside a UTF-8 character too)
        got, rest = _stream(FrameFolder(binary=True), [data[:cut], data[cut:]])
        assert (got, rest) == (complete.encode(), tail.encode()), cut


def test_streamed_one_character_at_a_time_and_at_random():
    rng = random.Random(7)
    parts = []
    for i in range(200):
        parts += [f"\r{j}/{i} [00:0{j % 10}<00:00, 1.00it/s]" for j in range(rng.randint(0, 5))]
        parts.append(rng.choice(["\n", f"line {i}\n", "\r   \r{'loss': 1}\n", "\r\n"]))
    text = "".join(parts)
    want = fold_frames(text)
    assert "".join(_stream(FrameFolder(), text)) == want
    cuts = sorted(rng.sample(range(1, len(text)), 100))
    assert "".join(_stream(FrameFolder(), [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])) == want


def test_pending_shows_the_live_frame_and_memory_is_one_frame():
    f = FrameFolder()
    assert f.feed("\r 1/9 [..]\r 2/9 [..]") == ""
    assert f.pending() == " 2/9 [..]"
    assert f.feed("\r" + " " * 12) == ""
    assert f.pending() == " 2/9 [..]"  # wiped: the last frame with text still shows
    for i in range(10000):
        f.feed(f"\r {i}/10000 [..]")
    assert f.pending() == " 9999/10000 [..]"
    assert len(f._shown) + len(f._current) < 40
    assert f.feed("\n") == " 9999/10000 [..]\n"
    assert f.pending() == "" and f.flush() == ""
