"""heartbeat.json: what the agent publishes about itself and its trainer, and when.

A beat carries the next seq, the trainer's liveness, its progress (last step, phase, where progress
comes from, the learned cadence), host and GPU stats; the sampler reuses the same facts.

When: every `heartbeat_s` (the loop's heartbeat duty), a last one when the trainer ended, and one
more the moment the run's own published hang deadline passes without a new step (the deadline
duty, `deadline_tick`). The watcher judges a hang from a beat's own `ts`, so without that extra
beat a hang would be seen only at the first regular beat after the deadline: up to one whole
interval late. The deadline is exactly the published record's, judged by
agent.protocol.cadence.assess as the watcher judges it (`hung_after_s`, plus the evaluation or
save allowance in those phases). One extra beat per crossing: once a published beat shows the run
hung past a deadline (whichever beat it was), the agent waits for the next step or phase.
"""

from __future__ import annotations

import logging
import os
import time

import psutil

from agent.daemon import hostfacts
from agent.protocol import records as p
from agent.protocol.cadence import assess

log = logging.getLogger("trainctl.agent")


def _crossing(rec: dict) -> tuple:
    """What identifies one deadline: the step and the phase start idleness counts from."""
    return rec.get("last_step_ts"), rec.get("phase_since")


class Heartbeats:
    """One agent's heartbeat writer (`agent`: agent.daemon.loop.Agent)."""

    def __init__(self, agent):
        self.a = agent
        self._shown = None  # the crossing a published beat already showed hung
        self._pace = None  # the cadence's state when `_due` was worked out
        self._due: tuple[float, tuple] | None = None  # (box time the deadline passes, its crossing)

    def write(self, alive: bool, why: str = p.Heartbeat.WHY_INTERVAL) -> p.Heartbeat:
        """Write heartbeat.json now: the next seq, the trainer's liveness and progress, host and GPU
        stats, and `why` it was written."""
        a = self.a
        a.state.hb_seq += 1
        tp = a.trainer.trainer_pid if a.trainer else None
        host = hostfacts.host_stats(a.wd.root)
        host.update(hostfacts.process_tree_stats(a.trainer.pgid if a.trainer and alive else None))
        host["agent_rss_bytes"] = psutil.Process().memory_info().rss
        if a.s.ram_total_bytes:  # the run's own RAM budget: samples measure the run against it
            host["ram_limit_bytes"] = a.s.ram_total_bytes
        hb = p.Heartbeat(ts=time.time(), seq=a.state.hb_seq, agent_pid=os.getpid(), trainer_alive=alive,
                         heartbeat_s=a.s.heartbeat_s, trainer_pid=tp, phase=a.progress.phase,
                         last_progress_ts=a.progress.last_progress_ts, last_step=a.progress.last_step,
                         host=host, gpus=hostfacts.gpu_stats(), spool_backlog_bytes=a.shipper.backlog(),
                         progress_source=a.progress.source, last_log_ts=a.output.last_log_ts,
                         cadence=a.progress.cadence_record(), oom_attempts=a.state.oom_attempts, why=why)
        a.sampler.observe(hb, time.monotonic())  # samples.json reuses these facts: no second nvidia-smi
        a.rs.write_heartbeat(a.run_id, hb)
        if hb.cadence is not None and assess(hb.cadence, hb.ts).hung:
            self._shown = _crossing(hb.cadence)  # the watcher has this hang now: no extra beat for it
        return hb

    def _deadline(self, now: float) -> tuple[float, tuple] | None:
        """(when the published deadline passes, its crossing), worked out again only when the cadence
        moved (a step, a phase): cheap enough for every tick."""
        c = self.a.progress.cadence
        pace = (c.steps_seen, c.last_ts, c.phase_name, c.phase_since)
        if pace != self._pace:
            self._pace, self._due = pace, None
            rec = self.a.progress.cadence_record()
            v = assess(rec, now) if rec is not None else None
            if v is not None and v.threshold_s is not None:
                self._due = (now - v.idle_s + v.threshold_s, _crossing(rec))
        return self._due

    def deadline_tick(self, _now: float) -> bool:
        """The deadline duty: a beat at once when the published deadline has just passed with no
        step and no published beat shows it yet; False (nothing done) otherwise."""
        now = time.time()
        due = self._deadline(now)
        if due is None or now <= due[0] or due[1] == self._shown:
            return False
        rec = self.a.progress.cadence_record()
        verdict = assess(rec, now) if rec is not None else None
        if verdict is None or not verdict.hung or _crossing(rec) == self._shown:
            return False  # rounding put `due` a hair early: the next tick writes it
        hb = self.write(self.a.trainer_alive, p.Heartbeat.WHY_DEADLINE)
        log.info("no step for %.0fs, past the run's own hang deadline (%.0fs): heartbeat %d written now",
                 verdict.idle_s, verdict.threshold_s, hb.seq)
        return True
