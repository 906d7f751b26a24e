"""Progress recognised in trainers' own output: log dicts, tqdm bars, a run's regex, and a real
HF Trainer run's merged stdout/stderr read chunk by chunk."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.outputparse import compile_progress_regex, parse_line
from agent.daemon.outputreader import MAX_FRAME_CHARS, OutputReader

REPO = Path(__file__).resolve().parents[2]
HF_SCRIPT = REPO / "tests" / "trainers" / "hf_trainer_script.py"
BLOCKS = "\u2588" * 9 + "\u258b"  # tqdm's bar glyphs, 3 bytes each in UTF-8

LINES = [  # (line, kind, fields that must match)
    ("{'loss': 6.63, 'grad_norm': 1.2, 'learning_rate': 0.0003333, 'epoch': 0.53}", "log",
     {"loss": 6.63, "lr": 0.0003333, "epoch": 0.53, "step": None}),
    ("{'loss': '6.63', 'learning_rate': '0.0003333', 'epoch': '0.5273'}", "log",
     {"loss": 6.63, "lr": 0.0003333, "epoch": 0.5273}),
    ("[2024-05-01 12:00:00,000] [INFO] [axolotl.callbacks.on_log:100] [PID:7] {'loss': 1.25, 'learning_rate': 2e-05, "
     "'epoch': 1.0}", "log", {"loss": 1.25, "lr": 2e-05, "epoch": 1.0}),
    ("{'loss': 2.1, 'grad_norm': 0.9, 'learning_rate': 0.0001, 'num_tokens': 51200.0, 'mean_token_accuracy': 0.61, "
     "'entropy': 1.9, 'epoch': 0.25}", "log", {"loss": 2.1, "lr": 0.0001}),  # TRL's SFTTrainer
    ('{"loss": 0.5, "lr": 1e-4, "step": 12, "done": false}', "log", {"loss": 0.5, "lr": 1e-4, "step": 12}),
    ("{'train/loss': 0.7, 'train/global_step': 40}", "log", {"loss": 0.7, "step": 40}),
    ("{'eval_loss': '4.265', 'eval_runtime': '0.005', 'eval_samples_per_second': '807.8', 'epoch': '0.3'}", "eval",
     {"eval_loss": 4.265, "runtime_s": 0.005, "epoch": 0.3}),
    ("{'train_runtime': '0.0869', 'train_samples_per_second': '138.1', 'train_loss': '5.079', 'epoch': '0.6'}",
     "summary", {"runtime_s": 0.0869, "loss": 5.079}),
    ("{'loss': nan, 'learning_rate': 0.0002, 'epoch': 0.1}", "log", {"lr": 0.0002}),
    ("{'loss': 'nan', 'learning_rate': '0.0002'}", "log", {"lr": 0.0002}),
    ("29/30 [00:21<00:00, 1.11it/s]", "bar", {"step": 29, "total": 30, "elapsed_s": 21.0}),
    (f" 97%|{BLOCKS}| 29/30 [00:21<00:00,  1.11it/s]", "bar", {"step": 29, "total": 30, "desc": ""}),
    (f"Training:  50%|{BLOCKS}| 15/30 [1:02:03<1:02:03, 248.20s/it, loss=0.5]", "bar",
     {"step": 15, "total": 30, "desc": "Training", "elapsed_s": 3723.0}),
    ("  0%|          | 0/30 [00:00<?, ?it/s]", "bar", {"step": 0, "total": 30}),
    ("Epoch 2: 40%|####      | 40/100 [00:10<00:15, 4.00batch/s]", "bar", {"step": 40, "desc": "Epoch 2"}),
    ("15it [00:10,  1.50it/s]", "bar", {"step": 15, "total": None}),
    (f"Map: 100%|{BLOCKS}| 1000/1000 [00:00<00:00, 5000.00 examples/s]", "other_bar", {"step": 1000, "desc": "Map"}),
    (f"Loading checkpoint shards: 100%|{BLOCKS}| 2/2 [00:01<00:00,  1.50it/s]", "other_bar", {"total": 2}),
    ("Downloading: 45%|####5     | 4.5M/10.0M [00:01<00:01, 4.5MB/s]", None, {}),
]

GARBAGE = ["", "   ", "{", "}", "{'loss': }", "{'loss': __import__('os').getpid()}", "{'a': 1, 'b': 2}",
           "{'loss': [1, 2]}", "[1, 2, 3]", "loss = 0.5 at step 3", "{'loss': " + "9" * 5000 + "}",
           "{" * 3000 + "'loss'" + "}" * 3000, "step 12/30 done [ok]", "\x00\x01\x02{'loss\x00': 1}",
           "{'loss': 1e999999}x", "12/34 [", "[00:01<00:02, 3.00it/s]"]


@pytest.mark.parametrize(("line", "kind", "fields"), LINES, ids=[f"{i}-{k}" for i, (_, k, _) in enumerate(LINES)])
def test_recognised_lines(line, kind, fields):
    rec = parse_line(line + "\n")
    assert (rec.kind if rec else None) == kind
    for name, want in fields.items():
        assert getattr(rec, name) == want, name
    if "nan" in line:
        assert math.isnan(rec.loss)


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_is_none(line):
    assert parse_line(line) is None


def test_random_bytes_never_raise():
    rng = random.Random(12)
    alphabet = "{}[]()/:'\",.% |\r\n0123456789eE+-_ itsloslearning_rateevalnaninf\u2588"
    for _ in range(3000):
        parse_line("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
    reader = OutputReader()
    for _ in range(300):
        reader.feed(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
    reader.flush()


def test_a_carriage_return_line_is_read_by_its_last_frame_with_text():
    line = "\r 50%|#####     | 15/30 [00:10<00:10, 1.5it/s]\r                \r{'loss': 0.25}\r   "
    assert parse_line(line).loss == 0.25


def test_run_regex_compiles_names_groups_and_goes_first():
    rx = compile_progress_regex(r"it (?P<step>\d+)/(?P<total>\d+) l=(?P<loss>[\d.]+)(?: lr=(?P<lr>\S+))?")
    rec = parse_line("it 7/90 l=0.125 lr=3e-4 {'loss': 9.0}", rx)
    assert (rec.kind, rec.step, rec.total, rec.loss, rec.lr) == ("regex", 7, 90, 0.125, 3e-4)
    assert parse_line("{'loss': 9.0}", rx).kind == "log"  # no match: the built-in readers still apply
    assert parse_line("it x/y l=abc", compile_progress_regex(r"it (?P<step>\S+)")) is None
    with pytest.raises(ValueError, match="does not compile"):
        compile_progress_regex(r"(?P<step>\d+")
    with pytest.raises(ValueError, match="names none of the groups"):
        compile_progress_regex(r"step (\d+)")


def _bar(n: int, total: int, elapsed: int = 0, desc: str = "") -> str:
    return f"\r{desc}{100 * n // total:3d}%|{BLOCKS}| {n}/{total} [00:{elapsed:02d}<00:01, 2.00it/s]"


def _stream() -> bytes:
    """A trainer's output: set-up text, a training bar with HF's log writes, an eval bar, the summary."""
    out = ["loading model\n", _bar(0, 4)]
    for step in range(1, 5):
        out += [_bar(step, 4, step), "\r" + " " * 40 + "\r", f"{{'loss': '{1.0 / step:.4g}', 'epoch': '{step / 4}'}}\n",
                _bar(step, 4, step)]
        if step == 2:
            out += ["\n", _bar(0, 3), _bar(3, 3), "\r" + " " * 40 + "\r", "{'eval_loss': '0.9', 'eval_runtime': '1.5'}\n",
                    _bar(2, 4, 2)]
    out += ["\n{'train_runtime': '9.0', 'train_loss': '0.5'}\n", "done \u2713\n"]
    return "".join(out).encode()


def _read_all(chunks) -> list:
    reader = OutputReader()
    out = []
    for c in chunks:
        out += reader.feed(c)
    return out + reader.flush()


def _view(recs):
    return [(r.kind, r.step, r.total, r.loss, r.eval_loss) for r in recs]


def test_stream_records_follow_the_training_bar():
    recs = [r for r in _read_all([_stream()]) if r.kind != "bar"]
    assert _view(recs) == [
        ("log", 1, 4, 1.0, None), ("log", 2, 4, 0.5, None), ("other_bar", 0, 3, None, None),
        ("other_bar", 3, 3, None, None), ("eval", 2, 4, None, 0.9), ("log", 3, 4, 0.3333, None),
        ("log", 4, 4, 0.25, None), ("summary", None, None, 0.5, None)]
    steps = [r.step for r in _read_all([_stream()]) if r.kind == "bar"]
    assert steps == sorted(steps) and steps[-1] == 4


def test_same_records_for_any_chunking():
    data = _stream()
    whole = _view(_read_all([data]))
    for cut in range(1, len(data)):  # every split point, including inside a 3-byte glyph
        assert _view(_read_all([data[:cut], data[cut:]])) == whole, cut
    assert _view(_read_all(data[i:i + 1] for i in range(len(data)))) == whole
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    assert _view(_read_all(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))) == whole


def test_a_whole_looking_trailing_frame_is_read_at_once_and_once():
    reader = OutputReader()
    assert _view(reader.feed(_bar(3, 10, 3).encode())) == [("bar", 3, 10, None, None)]
    assert reader.feed(b"\r") == [] and reader.feed(b" 40%|####") == []
    assert _view(reader.feed(b"      | 4/10 [00:04<00:01, 2.00it/s]")) == [("bar", 4, 10, None, None)]
    assert reader.flush() == []


def test_bars_of_set_up_loops_per_epoch_bars_and_a_restarted_clock():
    recs = _read_all(["".join([_bar(5, 5), _bar(0, 8), _bar(3, 8, 3), _bar(1, 8, 0), _bar(8, 8, 9),
                               _bar(0, 8, 0), _bar(2, 8, 2)]).encode()])
    # the finished 5-bar was a set-up loop; the 1/8 with a restarted clock is another bar (an eval's);
    # after 8/8, the same loop again counts on from 8
    assert [(r.kind, r.step, r.total) for r in recs] == [
        ("bar", 5, 5), ("bar", 0, 8), ("bar", 3, 8), ("other_bar", 1, 8), ("bar", 8, 8), ("bar", 8, None),
        ("bar", 10, None)]


def test_without_a_bar_a_log_is_not_held_and_memory_stays_bounded():
    reader = OutputReader()
    assert _view(reader.feed(b"{'loss': 0.5}\n")) == [("log", None, None, 0.5, None)]
    for _ in range(40):
        reader.feed(b"x" * 65536)  # one enormous line with no end
    assert len(reader._pending) <= MAX_FRAME_CHARS
    assert reader.feed(b"\n{'loss': 0.25}\n")[-1].loss == 0.25


@pytest.mark.slow
def test_a_real_hf_trainer_run_read_from_its_output(tiny_model, tmp_path):
    """Unmodified HF Trainer, output merged as the agent captures it, read in random chunks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TRAINCTL_PROGRESS_FILE", None)
    hist = tmp_path / "history.json"
    log = tmp_path / "trainer.log"
    with open(log, "wb") as fh:
        subprocess.run([sys.executable, str(HF_SCRIPT), "--model", str(tiny_model), "--out", str(tmp_path / "out"),
                        "--steps", "6", "--history", str(hist)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                       check=True, timeout=300)
    data = log.read_bytes()
    rng = random.Random(5)
    cuts = sorted(rng.sample(range(1, len(data)), min(300, len(data) - 1)))
    recs = _read_all(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    history = json.loads(hist.read_text())
    logged = {h["step"]: h for h in history if "loss" in h}
    logs = [r for r in recs if r.kind == "log"]
    assert [r.step for r in logs] == sorted(logged) == [1, 2, 3, 4, 5, 6]
    for r in logs:
        assert r.total == 6
        assert r.loss == pytest.approx(logged[r.step]["loss"], rel=1e-3)
        assert r.lr == pytest.approx(logged[r.step]["learning_rate"], rel=1e-3)
    bars = [r.step for r in recs if r.kind == "bar"]
    assert bars == sorted(bars) and bars[-1] == 6 and {r.total for r in recs if r.kind == "bar"} == {6}
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    assert {r.step: r.eval_loss for r in recs if r.kind == "eval"} == pytest.approx(evals, rel=1e-3)
    assert [r.kind for r in recs].count("summary") == 1
