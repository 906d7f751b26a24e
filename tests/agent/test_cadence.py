"""The adaptive hang deadline as table rows (warm-up, evaluation, checkpoint save, slow tail, clock
skew), the replayed trace of the issue, and a stopped trainer found within 10 median steps."""

from __future__ import annotations

import statistics

import pytest

from agent.daemon.cadence import EVAL, SAVE, Cadence, CadenceSettings, assess, percentile, would_be_hung
from bench.bench_cadence import make_trace, replay

S = CadenceSettings(timeout_s=900.0, floor_s=2.0)  # floor scaled down with the 1 s steps below


def steps(start: float, n: int, every: float, first: int = 1) -> list[tuple]:
    """`n` steps numbered from `first`, one every `every` seconds after `start`."""
    return [("step", start + i * every, first + i - 1) for i in range(1, n + 1)]


def run(events, settings: CadenceSettings = S) -> Cadence:
    c = Cadence(settings)
    for kind, ts, x in events:
        if kind == "step":
            c.step(ts, x)
        elif kind == "phase":
            c.phase(x, ts)
        else:
            c.phase_duration(x, ts)
    return c


WARMUP = [("step", 100.0, 1), ("step", 130.0, 2), ("step", 160.0, 3), ("step", 190.0, 4)]  # three 30 s gaps
TRAIN = WARMUP + steps(190.0, 20, 1.0, first=5)  # then 1 s steps: last at 210, step 24
EVAL_ON = TRAIN + [("phase", 210.5, "evaluating")]
EVAL_SEEN = TRAIN + [("phase", 210.5, "evaluating"), ("phase", 250.5, "training")] + steps(250.5, 10, 1.0, first=25) \
    + [("phase", 261.0, "evaluating")]  # a 40 s evaluation was seen; another starts at 261
SAVE_ON = TRAIN + [("phase", 210.5, "saving")]
TAIL = [e for i in range(40) for e in steps(1000.0 + i * 28.0, 1, 4.0, first=25 * i + 1)  # every 25th step 4 s
        + steps(1004.0 + i * 28.0, 24, 1.0, first=25 * i + 2)]

ROWS = [  # (id, events, now, phase given to assess (None: the record's), hung?)
    ("warm-up gaps only: the configured timeout", WARMUP + steps(190, 3, 1.0, first=5), 193 + 899, None, False),
    ("warm-up gaps only: past the timeout", WARMUP + steps(190, 3, 1.0, first=5), 193 + 901, None, True),
    ("warm-up left out: 1 s steps, idle 4 s", TRAIN, 214.0, None, False),
    ("warm-up left out: 1 s steps, idle 8 s", TRAIN, 218.0, None, True),
    ("first evaluation: default allowance", EVAL_ON, 210.5 + 45.0, None, False),
    ("first evaluation: far past the default", EVAL_ON, 210.5 + 80.0, None, True),
    ("evaluation phase passed explicitly", TRAIN, 210.0 + 45.0, "evaluating", False),
    ("second evaluation: learned 3 x 40 s", EVAL_SEEN, 261.0 + 100.0, None, False),
    ("second evaluation: past 3 x 40 s", EVAL_SEEN, 261.0 + 130.0, None, True),
    ("after an evaluation: a step's deadline from its end", EVAL_SEEN[:-11], 250.5 + 4.0, None, False),
    ("after an evaluation: stuck after its end", EVAL_SEEN[:-11], 250.5 + 8.0, None, True),
    ("a step ends an evaluation not marked over", EVAL_ON + [("step", 230.0, 25)], 230.0 + 8.0, None, True),
    ("checkpoint save: default allowance", SAVE_ON, 210.5 + 45.0, None, False),
    ("checkpoint save: its own allowance, not evaluation's", SAVE_ON + [("duration", 5.0, "evaluating")],
     210.5 + 45.0, None, False),
    ("slow tail: a 4 s step every 25 is allowed", TAIL, TAIL[-1][1] + 4.5, None, False),
    ("slow tail: still found when stopped", TAIL, TAIL[-1][1] + 12.0, None, True),
    ("clock skew: a step stamped in the past is ignored", TRAIN + [("step", 150.0, 99)], 218.0, None, True),
    ("clock skew: the judge's clock behind the box", TRAIN, 150.0, None, False),
    ("a repeated step is no progress", TRAIN + [("step", 217.0, 24)], 218.0, None, True),
    ("no step yet", [("phase", 10.0, "training")], 10_000.0, None, False),
]


@pytest.mark.parametrize(("events", "now", "phase", "hung"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_assess_rows(events, now, phase, hung):
    c = run(events)
    verdict = assess(c.record(), now, phase=phase)
    assert verdict.hung is hung, (verdict, c.record())
    assert would_be_hung(c.record(), now, phase=phase) is hung
    assert ("no progress for" in verdict.why) is hung


def test_the_record_heartbeat_json_carries():
    rec = run(EVAL_SEEN).record()
    assert rec["learned"] is True and rec["steps_seen"] == 34 and rec["evals_seen"] == 1 and rec["saves_seen"] == 0
    assert rec["step_p50_s"] == 1.0 and rec["step_p95_s"] == 1.0 and rec["gap_p95_s"] == 1.0
    assert rec["hung_after_s"] == 5.0  # 5 x p95, above the floor: the 30 s warm-up gaps left out
    assert rec["eval_allowance_s"] == 120.0 and rec["save_allowance_s"] == 50.0  # 3 x 40 s; 10 x the deadline
    assert (rec["phase"], rec["phase_since"], rec["last_step_ts"]) == ("evaluating", 261.0, 260.5)
    unlearned = Cadence(S).record()
    assert unlearned["hung_after_s"] == 900.0 and unlearned["learned"] is False and unlearned["step_p50_s"] is None
    assert unlearned["eval_allowance_s"] == S.phase_cap_s


def test_never_above_the_timeout_nor_below_the_floor():
    slow = run(steps(0.0, 30, 400.0), CadenceSettings(timeout_s=900.0))
    assert slow.record()["hung_after_s"] == 900.0
    fast = run(steps(0.0, 30, 0.01), CadenceSettings(timeout_s=900.0, floor_s=20.0))
    assert fast.record()["hung_after_s"] == 20.0


def test_reports_that_skip_steps_and_unnumbered_reports():
    c = run(steps(0.0, 20, 10.0))  # one report every 10 s ...
    c2 = Cadence(S)
    for i in range(1, 21):
        c2.step(i * 10.0, i * 10)  # ... covering 10 steps each
    assert c.record()["hung_after_s"] == c2.record()["hung_after_s"] == 50.0
    assert c2.record()["step_p50_s"] == 1.0
    c2.step(205.0)  # an unnumbered report once numbered ones came: the same step's log dict
    assert c2.record()["last_step_ts"] == 200.0
    c3 = Cadence(S)
    for i in range(1, 12):
        c3.step(i * 3.0)  # only unnumbered reports: each one is a step
    assert c3.record()["step_p50_s"] == 3.0


def test_bounded_window_follows_a_run_that_slows_down():
    c = run(steps(0.0, 5000, 1.0) + steps(5000.0, 300, 10.0, first=5001))
    rec = c.record()
    assert rec["step_p50_s"] == 10.0 and rec["hung_after_s"] == 50.0
    assert len(c._gaps) == S.window


def test_percentile():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile(range(1, 101), 0.95) == 95
    assert percentile(range(1, 101), 0.5) == 50


@pytest.mark.parametrize("seed", range(8))
def test_replayed_trace_has_no_false_hung_verdicts(seed):
    """2,000 log-normal steps (median 2 s), slower warm-up, 10 evaluations and 10 saves of 10-40 x the
    step time, judged from the published record just before every event (the longest idle moments)."""
    events = make_trace(seed)
    assert sum(1 for e in events if e[0] == "phase" and e[2] in (EVAL, SAVE)) == 20
    false, c = replay(events, CadenceSettings())
    assert false == 0
    assert c.record()["evals_seen"] == 10 and c.record()["saves_seen"] == 10


@pytest.mark.parametrize("seed", range(4))
def test_a_stopped_trainer_is_hung_within_ten_median_steps(seed):
    events = make_trace(seed, steps=600, evals=3, saves=3)
    cut = next(i for i, e in enumerate(events) if e[0] == "step" and e[2] == 400)
    _, c = replay(events[: cut + 1], CadenceSettings(floor_s=0.0))
    gaps = [b[1] - a[1] for a, b in zip(events[:cut], events[1: cut + 1], strict=True) if a[0] == b[0] == "step"]
    median = statistics.median(gaps)
    last = c.last_ts
    verdict = assess(c.record(), last + 10 * median)
    assert verdict.hung, verdict
    assert verdict.threshold_s <= 10 * median
    assert not assess(c.record(), last + 3 * median).hung  # and not before it is more than a slow step


def test_timestamps_going_backwards_change_nothing():
    c = run(EVAL_SEEN)
    before = c.record()
    c.step(100.0, 500)  # the box's clock stepped back
    c.phase("saving", 200.0)
    c.phase_duration("saving", -3.0)
    assert c.record() == before
    c.step(262.0, 36)  # and forward again: taken
    assert c.record()["last_step_ts"] == 262.0 and c.record()["evals_seen"] == 2
