"""The deadline beat (agent.daemon.heartbeat): a real agent beating every 600 s writes a heartbeat
the moment its own published hang deadline passes without a step, once per crossing, and the
watcher's real sweep says hung from it, long before the next regular beat could.

The trainer (tests/trainers/warn_trainer.py, progress-file mode) steps every 0.1 s until it is
SIGSTOPped (pinned by a pidfd from trainer.pid). Every wait is on an event in the store. The deadline the
agent keeps between steps (worked out once per change of the cadence) is checked against
agent.protocol.cadence.assess, phase allowances included.
"""

from __future__ import annotations

import sys
import time

import pytest

from agent.daemon.cadence import EVAL, SAVE
from agent.daemon.heartbeat import Heartbeats
from agent.daemon.progress import ProgressTracker
from agent.protocol import records as p
from agent.protocol.cadence import assess
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.e2e.harness import ledger_kinds
from tests.trainers.harness import REPO, Agents, PinnedTrainer, wait_for

RUN = "deadline-20260101-120000"
TRAINER = str(REPO / "tests" / "trainers" / "warn_trainer.py")
HEARTBEAT_S = 600.0  # no regular beat after the first while the test runs: every later one is a deadline beat


def _read(fn):
    try:
        return fn(RUN)
    except p.RecordError:  # not written yet
        return None


def _next_beat(rs: RunStore, after: p.Heartbeat, what: str) -> p.Heartbeat:
    return wait_for(lambda: (hb := _read(rs.read_heartbeat)) and hb.seq > after.seq and hb, timeout=240, what=what)


def _stepping_past(rs: RunStore, step: int) -> int:
    pr = wait_for(lambda: (pr := _read(rs.read_progress)) and (pr.step or 0) > step and pr, timeout=60,
                  what=f"progress past step {step}")
    return pr.step


def _assert_deadline_beat(hb: p.Heartbeat, before: p.Heartbeat) -> None:
    """`hb` was written because the published deadline passed: it says so, it is the very next beat,
    its own ts shows the run idle past the deadline it publishes, and no interval had elapsed."""
    assert hb.why == p.Heartbeat.WHY_DEADLINE, hb
    assert hb.seq == before.seq + 1  # nothing in between: no regular beat, no second one per crossing
    assert hb.cadence is not None and hb.cadence["learned"]
    verdict = assess(hb.cadence, hb.ts)
    assert verdict.hung and verdict.idle_s > verdict.threshold_s >= hb.cadence["hung_after_s"]
    assert hb.ts - before.ts < HEARTBEAT_S  # long before the interval would have given a beat
    assert hb.trainer_alive and hb.progress_source == p.Heartbeat.SOURCE_TRAINER


@pytest.mark.slow
def test_a_beat_is_written_when_the_runs_own_deadline_passes_and_the_sweep_says_hung(agents, slack, tmp_path):
    from ops.config import build_watcher
    from ops.state import Settings

    root, wd = tmp_path / "store", tmp_path / "wd"
    rs = RunStore(LocalStore(root))
    proc = agents.start(RUN, str(root), wd, [sys.executable, TRAINER, str(tmp_path / "control.json"),
                                             "--progress-file"], extra=["--heartbeat-s", str(HEARTBEAT_S)])
    trainer = PinnedTrainer(wd)
    first = wait_for(lambda: _read(rs.read_heartbeat), what="the first heartbeat")
    assert first.why == p.Heartbeat.WHY_INTERVAL and first.heartbeat_s == HEARTBEAT_S
    _stepping_past(rs, 20)  # enough steps for the agent to learn the run's cadence
    trainer.stop()
    try:
        hb = _next_beat(rs, first, "the deadline beat")
        _assert_deadline_beat(hb, first)
        assert "past the run's own hang deadline" in Agents.output(proc)

        watcher = build_watcher(str(root), settings=Settings(), webhook_url=slack.webhook_url, ec2=False)
        watcher.sweep(time.time())
        posts = [x["body"].get("text", "") for x in slack.posts if RUN in x["body"].get("text", "")]
        assert any("Training hung" in t and "from the run's own cadence" in t for t in posts), posts
        assert ledger_kinds(rs, RUN) == ["alert:hung"]

        # Progress again, then a second hang: one beat for the new crossing, none more for the first.
        trainer.resume()
        _stepping_past(rs, hb.last_step)
        trainer.stop()
        again = _next_beat(rs, hb, "the second crossing's deadline beat")
        _assert_deadline_beat(again, hb)
        assert again.cadence["last_step_ts"] > hb.cadence["last_step_ts"]
    finally:
        trainer.resume()
        trainer.close()


def test_the_kept_deadline_is_the_published_records_own_in_every_phase(tmp_path):
    progress = ProgressTracker(tmp_path / p.WD_PROGRESS)
    beats = Heartbeats(type("AgentFacts", (), {"progress": progress})())
    t = 1_000_000.0
    assert beats._deadline(t) is None  # nothing published: no deadline to beat on
    for n in range(1, 13):
        progress._step({"step": n}, t + n)
    assert progress.cadence_record() is not None  # learned: the heartbeat publishes it
    for phase, at in (("training", t + 12), (EVAL, t + 13), ("training", t + 20), (SAVE, t + 21)):
        progress.set_phase(phase, at)
        rec = progress.cadence_record()
        due, crossing = beats._deadline(at + 0.5)
        verdict = assess(rec, due - 1e-6)
        assert not verdict.hung and assess(rec, due + 1e-6).hung  # the crossing, exactly where assess puts it
        assert crossing == (rec["last_step_ts"], rec["phase_since"])
        assert (verdict.phase is not None) == (phase in (EVAL, SAVE))  # the phase's allowance is in it
    assert beats._deadline(t + 40) == (due, crossing)  # kept while the cadence does not move
