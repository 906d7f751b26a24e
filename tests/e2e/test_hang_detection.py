"""Hang detection under the real agent, judged by the watcher's real sweep (issue 12).

- The unmodified HF Trainer script (tests/trainers/hf_trainer_script.py) on the tiny model: once the
  agent publishes the run's cadence, the trainer is SIGSTOPped (by the pid in the workdir's
  trainer.pid) and the watcher alerts it hung after the run's own deadline, far inside the configured
  progress timeout, with the evidence; SIGCONT resolves it.
- A script that logs steadily with nothing recognisable as progress, for longer than every timeout,
  is never hung; one that goes silent is, with the log-silence reason.

Sweeps run at the real time after a new heartbeat is stored (waiting on the store, not on sleeps), so
each sweep judges what the agent last published. Quick settings, one trainer thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.e2e.harness import ledger_kinds, wait_for
from tests.fixtures.moto_server import REGION
from tests.trainers.harness import REPO, Agents, PinnedTrainer

pytestmark = pytest.mark.slow

SCRIPT = str(REPO / "tests" / "trainers" / "hf_trainer_script.py")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
WATCH_HEARTBEAT_S = 1.5  # the agents beat every 0.5 s (FAST); a few beats' slack so none reads as late


class Watched:
    """A run on moto's S3 under the real agent, and the product's watcher over its store."""

    def __init__(self, moto, slack, agents: Agents, tmp: Path, run_id: str, **settings):
        from ops.config import build_watcher
        from ops.state import Settings

        bucket = moto.new_bucket()
        self.url, self.endpoint, self.env = f"s3://{bucket}/training-runs", moto.endpoint, {**moto.env(), **ENV}
        self.rs = RunStore(S3Store(bucket, "training-runs", endpoint_url=moto.endpoint, region=REGION))
        self.run_id, self.workdir, self.agents, self.slack = run_id, tmp / run_id, agents, slack
        self.settings = Settings(heartbeat_s=WATCH_HEARTBEAT_S, grace_s=5.0, launch_timeout_s=120.0, lease_s=30.0,
                                 **settings)
        self.watcher = build_watcher(self.url, moto.endpoint, settings=self.settings, webhook_url=slack.webhook_url,
                                     ec2=False)
        self.seq = -1

    def start(self, cmd: list[str]):
        return self.agents.start(self.run_id, self.url, self.workdir, cmd, env=self.env, endpoint=self.endpoint)

    def heartbeat(self) -> p.Heartbeat | None:
        try:
            return self.rs.read_heartbeat(self.run_id)
        except p.RecordError:  # mid-write on a local disk never happens on S3, but be safe
            return None

    def sweep_on_new_heartbeat(self, ended=lambda: False):
        """Wait for a heartbeat newer than the last one swept, then sweep once; returns the heartbeat
        (None, without sweeping, once `ended()`: the agent exited and beats no more)."""
        hb = wait_for(lambda: ((h := self.heartbeat()) and h.seq > self.seq and h) or (ended() and "ended"),
                      timeout=60, what="a new heartbeat")
        if hb == "ended":
            return None
        self.seq = hb.seq
        self.watcher.sweep(time.time())
        return hb

    def sweep_until(self, pred, what: str, timeout: float = 180):
        """Sweep after each new heartbeat until `pred(heartbeat)` holds; returns that heartbeat."""
        return wait_for(lambda: (hb := self.sweep_on_new_heartbeat()) and pred(hb) and hb, timeout=timeout,
                        what=what, interval=0.0)

    def posts(self) -> list[str]:
        return [x["body"].get("text", "") for x in self.slack.posts if self.run_id in x["body"].get("text", "")]

    def field(self, text: str, name: str) -> str:
        return next(line[len(name) + 2:] for line in text.splitlines() if line.startswith(f"{name}: "))


def test_sigstopped_hf_trainer_is_hung_after_its_own_cadence_and_resolved_on_sigcont(
        moto_server, slack, agents, tmp_path, tiny_model):
    w = Watched(moto_server, slack, agents, tmp_path, "hfhang-20260101-120000", progress_timeout_s=600.0,
                setup_progress_timeout_s=600.0, log_silence_s=600.0)
    w.start([sys.executable, SCRIPT, "--model", str(tiny_model), "--out", str(w.workdir / "output" / "hf"),
             "--steps", "100000", "--save-steps", "100000", "--eval-steps", "100000"])
    hb = w.sweep_until(lambda h: h.cadence is not None and h.cadence.get("steps_seen", 0) >= 15,
                       "the agent to publish the run's cadence")
    assert hb.progress_source == p.Heartbeat.SOURCE_OUTPUT  # read from the unmodified script's output
    assert w.posts() == []  # healthy so far
    trainer = PinnedTrainer(w.workdir)
    trainer.stop()
    try:
        hung = w.sweep_until(lambda h: any("Training hung" in t for t in w.posts()), "the hung alert")
        [alert] = w.posts()
        deadline = hung.cadence["hung_after_s"]
        assert deadline < w.settings.progress_timeout_s  # the run's own deadline, not the configured one
        reason, evidence = w.field(alert, "Reason"), w.field(alert, "Evidence")
        assert reason.startswith("no training progress for ") and "from the run's own cadence" in reason, reason
        from agent.protocol.durations import fmt_duration

        assert f"hung after {fmt_duration(deadline)}" in reason and "the agent is alive" in reason, reason
        assert evidence.startswith("steps every ") and f"hung after {fmt_duration(deadline)}" in evidence
        assert "last log line " in evidence and evidence.endswith("(heartbeat)"), evidence
        assert "py-spy dump --pid" in alert
        assert ledger_kinds(w.rs, w.run_id) == ["alert:hung"]
    finally:
        trainer.resume()
        trainer.close()
    step = hung.last_step
    w.sweep_until(lambda h: (h.last_step or 0) > step and any("Resolved" in t for t in w.posts()),
                  "steps again and the resolved message")
    assert [t.splitlines()[0].split(" for ")[0] for t in w.posts()] == ["🧊 Training hung",
                                                                        "🟢 Resolved: training hung"]


STEADY = """
import sys, time
for i in range(int(sys.argv[1])):
    print(f"working on item {i} of the corpus, all good", flush=True)
    time.sleep(0.2)
"""

GOES_SILENT = """
import time
for i in range(5):
    print(f"warming caches, round {i}", flush=True)
    time.sleep(0.1)
time.sleep(3600)
"""


def test_steady_logs_without_progress_are_never_hung(moto_server, slack, agents, tmp_path):
    """Logs every 0.2 s for longer than every timeout (progress 2 s, log silence 3 s; the setup timeout, 6 s,
    which also bounds the wait for the first output, is the longest): judged by its log, never by
    missing progress. (Log silence is the finalizing agent's margin: the trainer's output ends when it
    exits, and the agent writes _complete right after.)"""
    script = tmp_path / "steady.py"
    script.write_text(STEADY)
    w = Watched(moto_server, slack, agents, tmp_path, "steady-20260101-120000", progress_timeout_s=2.0,
                setup_progress_timeout_s=6.0, log_silence_s=3.0)
    proc = w.start([sys.executable, str(script), "60"])  # 12 s of output: twice the longest timeout
    judged = 0
    while (hb := w.sweep_on_new_heartbeat(ended=lambda: proc.poll() is not None)) is not None:
        assert hb.progress_source is None and hb.cadence is None, hb  # nothing in it reads as progress
        judged += hb.last_log_ts is not None and hb.trainer_alive
    assert agents.wait(proc, 60) == 0
    w.watcher.sweep(time.time())
    assert judged >= 10  # sweeps that judged it by its log while it ran
    assert "alert:hung" not in ledger_kinds(w.rs, w.run_id)
    assert not any("hung" in t.lower() for t in w.posts()), w.posts()
    assert w.rs.read_complete(w.run_id) is not None


def test_a_script_that_goes_silent_is_hung_with_the_log_silence_reason(moto_server, slack, agents, tmp_path):
    script = tmp_path / "silent.py"
    script.write_text(GOES_SILENT)
    w = Watched(moto_server, slack, agents, tmp_path, "silent-20260101-120000", progress_timeout_s=600.0,
                setup_progress_timeout_s=600.0, log_silence_s=3.0)
    w.start([sys.executable, str(script)])
    w.sweep_until(lambda h: h.last_log_ts is not None, "the first log output")
    w.sweep_until(lambda h: any("Training hung" in t for t in w.posts()), "the hung alert")
    [alert] = w.posts()
    reason = w.field(alert, "Reason")
    assert reason.startswith("no log output for ") and "while the agent is alive" in reason, reason
    assert "silent after 3s" in reason
    assert w.field(alert, "Evidence").startswith("no progress source recognised, silent after 3s, last log line ")
    assert "warming caches, round 4" in alert  # the log excerpt
