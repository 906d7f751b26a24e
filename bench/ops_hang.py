"""Hang detection through the watcher, replayed on a simulated clock (bench_ops's hang rows).

The agent's half is the real agent.daemon.cadence.Cadence, fed each step and phase of a trace and
published as the agent publishes it (a Heartbeat every `heartbeat_s`: progress source, last step,
phase, `cadence` once learned, else None). The watcher's half is the real ops.state.assess, called
at every sweep on the latest heartbeat. Nothing sleeps: the clock is the trace's.

- Hang to alert: the trainer stops after a step; the figure is the time from that last step to the
  first sweep that says hung. Heartbeat and sweep clocks start at a random offset per replay. With
  `deadline_beat` the agent also beats at its first tick (every `tick_s`) past its own published
  deadline, once per crossing, as agent.daemon.heartbeat does; without it, only on its interval.
- False alerts: a whole trace with no hang, counting every sweep that says hung; besides the regular
  heartbeats, one is published just before every step and phase change (the longest idle moments),
  each judged at once.
"""

from __future__ import annotations

import math
import random
import statistics

from agent.daemon.cadence import Cadence, CadenceSettings
from agent.daemon.cadence import assess as judge_cadence
from agent.protocol import records as p
from ops.state import HUNG, RunFacts, Settings, assess

RID = "bench-20270101-000000"


class Agent:
    """What the agent knows and publishes, fed the trace's events in order."""

    def __init__(self, start: float, heartbeat_s: float, adaptive: bool):
        self.c, self.hb_s, self.adaptive = Cadence(CadenceSettings()), heartbeat_s, adaptive
        self.last_step = self.last_ts = None
        self.phase, self.seq = "training", 0
        self.md = p.Metadata(run_id=RID, created=start, phase="running", heartbeat_s=heartbeat_s)

    def feed(self, kind: str, ts: float, x) -> None:
        if kind == "step":
            self.c.step(ts, x)
            self.last_step, self.last_ts = x, ts
        else:
            self.c.phase(x, ts)
            self.phase = x

    def beat(self, ts: float) -> p.Heartbeat:
        self.seq += 1
        rec = self.c.record()
        cadence = rec if self.adaptive and rec["learned"] else None  # the fixed timeout: an older agent
        return p.Heartbeat(ts=ts, seq=self.seq, agent_pid=1, trainer_alive=True, heartbeat_s=self.hb_s,
                           phase=self.phase, last_progress_ts=self.last_ts, last_step=self.last_step,
                           progress_source=p.Heartbeat.SOURCE_TRAINER if self.last_ts else None,
                           last_log_ts=self.last_ts, cadence=cadence)


def _judge(agent: Agent, hb: p.Heartbeat, now: float, s: Settings) -> bool:
    return assess(RunFacts(RID, metadata=agent.md, heartbeat=hb), now, s).state == HUNG


def _deadline_tick(agent: Agent, start: float, now: float, tick_s: float) -> float:
    """The agent's first tick after its published deadline passes (inf: none published)."""
    rec = agent.c.record()
    v = judge_cadence(rec, now) if agent.adaptive and rec["learned"] else None
    if v is None or v.threshold_s is None:
        return float("inf")
    due = now - v.idle_s + v.threshold_s
    return start + (math.floor((due - start) / tick_s) + 1) * tick_s


def hang_to_alert(events: list[tuple], stop_step: int, heartbeat_s: float, sweep_s: float, s: Settings,
                  adaptive: bool, rng: random.Random, deadline_beat: bool = False, tick_s: float = 0.25) -> float:
    """Seconds from the trainer's last step (`stop_step`) to the first sweep that says hung."""
    cut = next(i for i, e in enumerate(events) if e[0] == "step" and e[2] == stop_step)
    start = events[0][1] - 1.0
    agent, hb, next_dl = Agent(start, heartbeat_s, adaptive), None, float("inf")
    next_hb, next_sweep = start + rng.uniform(0, heartbeat_s), start + rng.uniform(0, sweep_s)
    queue = iter(events[: cut + 1])
    ev = next(queue, None)
    while True:
        t = min(next_hb, next_sweep, ev[1] if ev else float("inf"), next_dl)
        if ev and t == ev[1]:
            agent.feed(*ev)
            ev = next(queue, None)
            next_dl = _deadline_tick(agent, start, t, tick_s) if deadline_beat else next_dl
        elif t == next_hb:
            hb, next_hb = agent.beat(t), next_hb + heartbeat_s
            next_dl = float("inf") if t >= next_dl else next_dl  # this beat showed the crossing already
        elif t == next_dl:
            hb, next_dl = agent.beat(t), float("inf")  # once per crossing
        else:
            if hb is not None and _judge(agent, hb, t, s):
                if ev is not None:
                    raise AssertionError(f"hung at {t} before the trainer stopped")
                return t - agent.last_ts
            next_sweep += sweep_s


def false_alerts(events: list[tuple], heartbeat_s: float, sweep_s: float, s: Settings) -> int:
    """Sweeps that say hung over a trace that never hangs (regular beats and sweeps, and a beat
    judged just before every event)."""
    start = events[0][1] - 1.0
    agent, hb, false = Agent(start, heartbeat_s, True), None, 0
    next_hb, next_sweep = start + heartbeat_s / 2, start + sweep_s / 3
    for kind, ts, x in events:
        while min(next_hb, next_sweep) < ts:
            if next_hb <= next_sweep:
                hb, next_hb = agent.beat(next_hb), next_hb + heartbeat_s
            else:
                false += hb is not None and _judge(agent, hb, next_sweep, s)
                next_sweep += sweep_s
        before = agent.beat(ts - 1e-3)
        false += _judge(agent, before, ts - 1e-3, s)
        agent.feed(kind, ts, x)
    return false


def rows(quick: bool, make_trace, heartbeat_s: float, sweep_s: float, median_s: float = 2.0) -> list[dict]:
    """Hang to alert (adaptive vs the fixed timeout) and false alerts, for a trainer stepping every `median_s`."""
    s = Settings()
    seeds = range(3 if quick else 20)
    adaptive, fixed, beat = [], [], []
    for seed in seeds:
        events = make_trace(seed, steps=700, evals=3, saves=3, median_s=median_s)
        for stop in (200, 350, 500, 650):
            adaptive.append(hang_to_alert(events, stop, heartbeat_s, sweep_s, s, True, random.Random(seed * 7 + stop)))
            fixed.append(hang_to_alert(events, stop, heartbeat_s, sweep_s, s, False, random.Random(seed * 7 + stop)))
            beat.append(hang_to_alert(events, stop, heartbeat_s, sweep_s, s, True, random.Random(seed * 7 + stop),
                                      deadline_beat=True))
    a, f, b = statistics.median(adaptive), statistics.median(fixed), statistics.median(beat)
    goal = 10 * median_s + sweep_s
    false_seeds = range(3 if quick else 20)
    false = sum(false_alerts(make_trace(seed, median_s=median_s), heartbeat_s, sweep_s, s) for seed in false_seeds)
    where = f"heartbeat {heartbeat_s:g} s, sweep {sweep_s:g} s"
    return [
        {"name": f"hang to alert, trainer stepping every {median_s:g} s, adaptive vs fixed ({where}; median, "
                 f"worst {max(adaptive):.0f} s)", "value": a, "baseline": f, "ratio": a / f, "unit": "s",
         "target": f"<= {goal:g} s (10 x the step + one sweep)"},
        {"name": f"hang to alert, trainer stepping every {median_s:g} s, deadline beat vs interval beats only "
                 f"({where}; median, worst {max(beat):.0f} s vs {max(adaptive):.0f} s)", "value": b, "baseline": a,
         "ratio": b / a, "unit": "s", "target": f"worst <= the deadline + one sweep ({sweep_s:g} s), not + a heartbeat"},
        {"name": f"false hung alerts through the watcher, {len(false_seeds)} replays of 2,000 steps, 10 evals, "
                 f"10 saves ({where})", "value": false, "baseline": None, "ratio": None, "unit": "alerts",
         "target": "0"},
    ]
