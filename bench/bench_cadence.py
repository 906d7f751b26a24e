"""Cadence benchmarks (issue 12): the adaptive hang deadline and the output parser's cost.

- Hang to alert for a trainer stepping every 2 s, adaptive deadline vs the fixed 15-minute one:
  goal <= 10 x the median step (the watcher's sweep interval comes on top of either).
- False hung verdicts over replayed traces of 2,000 log-normal steps with 10 evaluations and 10
  checkpoint saves of 10-40 x the step time, judged just before every event: goal 0.
- The output parser over a 50k-line flood (mixed: plain text, HF log dicts, tqdm frames, junk)
  and over the agent benchmark's plain flood, vs a baseline that only decodes and splits lines.

Pure Python, no subprocesses: the figures are the parser's and the deadline's own. Run alone with
`python -m bench.bench_cadence`.
"""

from __future__ import annotations

import math
import random
import sys
import time

from agent.daemon.cadence import EVAL, SAVE, Cadence, CadenceSettings, assess
from agent.daemon.outputreader import OutputReader

FIXED_TIMEOUT_S = 900.0


def make_trace(seed: int, steps: int = 2000, median_s: float = 2.0, sigma: float = 0.25, evals: int = 10,
               saves: int = 10, pause: tuple[float, float] = (10.0, 40.0), warmup: int = 3,
               warmup_x: float = 6.0) -> list[tuple]:
    """Events ("step", ts, n) and ("phase", ts, name): log-normal step times around `median_s`,
    slower warm-up steps, and evaluations / saves lasting `pause` x the median step."""
    rng = random.Random(seed)
    spots = rng.sample(range(20, steps), evals + saves)
    phase_at = {n: EVAL for n in spots[:evals]} | {n: SAVE for n in spots[evals:]}
    t, events = 1_000_000.0, []
    for n in range(1, steps + 1):
        t += median_s * math.exp(rng.gauss(0.0, sigma)) * (warmup_x if n <= warmup else 1.0)
        events.append(("step", t, n))
        if n in phase_at:
            events.append(("phase", t + 0.01, phase_at[n]))
            t += 0.01 + rng.uniform(*pause) * median_s
            events.append(("phase", t, "training"))
    return events


def replay(events: list[tuple], settings: CadenceSettings) -> tuple[int, Cadence]:
    """Feed `events` to a Cadence, judging the run just before each event (when it has been idle
    longest), from its published record alone; returns (false hung verdicts, the cadence)."""
    c, false = Cadence(settings), 0
    for kind, ts, x in events:
        if assess(c.record(), ts - 1e-6).hung:  # the record alone: as the watcher has it
            false += 1
        if kind == "step":
            c.step(ts, x)
        else:
            c.phase(x, ts)
    return false, c


def _hang_rows(quick: bool) -> list[dict]:
    settings = CadenceSettings(timeout_s=FIXED_TIMEOUT_S)
    seeds = range(5 if quick else 40)
    false = sum(replay(make_trace(seed), settings)[0] for seed in seeds)
    _, c = replay(make_trace(99, steps=500, evals=2, saves=2), settings)
    threshold = assess(c.record(), c.last_ts).threshold_s
    return [
        {"name": "hang to alert, trainer stepping every 2 s (adaptive vs fixed)", "value": threshold,
         "baseline": FIXED_TIMEOUT_S, "ratio": threshold / FIXED_TIMEOUT_S, "unit": "s",
         "target": "<= 20 s (10 x the 2 s step), + one sweep"},
        {"name": f"false hung verdicts, {len(seeds)} replays of 2,000 steps, 10 evals, 10 saves", "value": false,
         "baseline": None, "ratio": None, "unit": "verdicts", "target": "0"},
    ]


def mixed_flood(n: int, seed: int = 0) -> bytes:
    """`n` lines as trainers print them: mostly text, HF log dicts, tqdm frames, some junk."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.70:
            out.append(f"step {i:07d} loss=1.2345 lr=0.0002 tokens_per_s=2150.0 grad_norm=0.41 padding text\n")
        elif r < 0.80:
            out.append(f"{{'loss': '{1 / (i + 1):.4g}', 'grad_norm': '0.41', 'learning_rate': '0.0002', "
                       f"'epoch': '{i / n:.4g}'}}\n")
        elif r < 0.95:
            out.append(f"\r{100 * i // n:3d}%|\u2588\u2588\u2588       | {i}/{n} [00:{i % 60:02d}<00:10,  1.11it/s]")
        else:
            out.append("{'not': 'a log', 'loss'" + "x" * rng.randint(0, 200) + "\n")
    return "".join(out).encode()


def plain_flood(n: int) -> bytes:
    """The agent benchmark's flood: one plain line per step."""
    return "".join(f"step {i:07d} loss=1.2345 lr=0.0002 tokens_per_s=2150.0 grad_norm=0.41 epoch=0.12 "
                   "padding text\n" for i in range(n)).encode()


def _chunks(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _baseline(chunks: list[bytes]) -> int:
    buf, n = "", 0
    for c in chunks:
        lines = (buf + c.decode("utf-8", "replace")).split("\n")
        buf = lines.pop()
        n += len(lines)
    return n


def _parse(chunks: list[bytes]) -> int:
    reader = OutputReader()
    return sum(len(reader.feed(c)) for c in chunks) + len(reader.flush())


def _cpu(fn, chunks, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        fn(chunks)
        best = min(best, time.process_time() - t0)
    return best


def _parser_rows(quick: bool) -> list[dict]:
    n, rows = 50_000, []
    for label, data in (("mixed", mixed_flood(n)), ("plain", plain_flood(n))):
        chunks = _chunks(data)
        base, parsed = _cpu(_baseline, chunks, 3 if quick else 7), _cpu(_parse, chunks, 3 if quick else 7)
        rows.append({"name": f"output parser, 50k-line {label} flood (per line)", "value": parsed / n * 1e6,
                     "baseline": base / n * 1e6, "ratio": parsed / base, "unit": "us/line",
                     "target": "small next to the agent's own per-line cost (agent total <= 1.1x)"})
    return rows


def run(quick: bool = True) -> list[dict]:
    """Rows for `make bench`."""
    return _hang_rows(quick) + _parser_rows(quick)


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(row)
