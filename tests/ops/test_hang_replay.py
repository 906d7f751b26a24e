"""The watcher's assess over heartbeats the agent's real Cadence publishes, on a simulated clock
(bench/ops_hang.py): no false hung alert over replayed traces with evaluations and saves, and a
stopped trainer alerted after its own deadline, not the fixed timeout."""

from __future__ import annotations

import random
import statistics

import pytest

from bench.bench_cadence import make_trace
from bench.ops_hang import false_alerts, hang_to_alert
from ops.state import Settings


@pytest.mark.parametrize("seed", range(3))
def test_no_false_hung_alerts_over_a_replayed_trace(seed):
    """2,000 log-normal steps, 10 evaluations and 10 saves of 10-40 x the step; beats every 30 s and
    just before every event, each judged."""
    assert false_alerts(make_trace(seed), heartbeat_s=30.0, sweep_s=30.0, s=Settings()) == 0
    assert false_alerts(make_trace(seed + 10), heartbeat_s=2.0, sweep_s=2.0, s=Settings()) == 0


@pytest.mark.parametrize("seed", range(3))
def test_a_stopped_trainer_is_alerted_after_its_own_deadline(seed):
    events = make_trace(seed, steps=600, evals=3, saves=3)
    gaps = [b[1] - a[1] for a, b in zip(events, events[1:], strict=False) if a[0] == b[0] == "step"]
    median = statistics.median(gaps)
    for stop in (300, 550):
        adaptive = hang_to_alert(events, stop, 2.0, 2.0, Settings(), True, random.Random(stop))
        fixed = hang_to_alert(events, stop, 2.0, 2.0, Settings(), False, random.Random(stop))
        assert adaptive <= 10 * median + 2.0 + 2.0  # the deadline, plus at most one beat and one sweep
        assert fixed > Settings().progress_timeout_s  # the old way: the whole fixed timeout
