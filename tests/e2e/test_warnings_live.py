"""Each loss and memory warning from a real agent run, through the watcher's real sweep (issue 15 item 4).

A stand-in trainer (tests/trainers/warn_trainer.py) under the real `ctl agent run` is steered into a
condition and out of it by a control file it acknowledges: host memory pressure (real memory held
against the run's configured RAM, `--ram-total-gb`), no learning (a loss that does not fall; a loss
spike) and overfitting (eval losses rising K evaluations in a row, printed HF-Trainer-style). The
agent rewrites history.json every `--history-s` (scaled down here, 60 s on a box) and samples.json
every TRAINCTL_SAMPLES_WRITE_S. Every sweep is the real one (assess, ledger, policy, message, the
Slack stand-in's webhook) at the real time, judging warnings at every sweep (check_s scaled down).
Each warning is sent once however many sweeps see it, a "Warning cleared" follows once the
condition ends, and the run is never an incident: no hung, no failed, only the completion at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.records import HISTORY, SAMPLES, WD_PROGRESS
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.state import Settings
from ops.sweep import Watcher
from ops.warnings import GIB, WarningSettings
from tests.e2e.harness import headlines, wait_for
from tests.trainers.harness import Agents

TRAINER = str(Path(__file__).resolve().parents[1] / "trainers" / "warn_trainer.py")
FAST = ["--heartbeat-s", "0.2", "--history-s", "0.2"]  # history.json at most every 0.2 s, not 60 s
ENV = {"TRAINCTL_SAMPLE_S": "0.1", "TRAINCTL_SAMPLES_WRITE_S": "0.2"}
SWEEPS_MORE = 5  # sweeps after a warning was sent that must not send it again


class Steered:
    """One run of the steerable trainer under the real agent, and the watcher sweeping it."""

    def __init__(self, run_id: str, agents: Agents, tmp: Path, store, slack, ws: WarningSettings = WarningSettings(),
                 extra: tuple[str, ...] = (), trainer_args: tuple[str, ...] = (), **control):
        self.run_id, self.agents, self.slack = run_id, agents, slack
        self.rs, self.control, self.gen = RunStore(store), tmp / "control.json", 0
        write_atomic(self.control, json.dumps({"gen": 0, **control}))  # what it does from its first step
        # Only the warning under test can hold: the host's free disk and its swap (other processes'
        # doing, on a shared machine) are out of it.
        self.settings = Settings(warnings=dataclasses.replace(ws, min_free_gb=1e-6, swap_growth_mb=1e12,
                                                              check_s=0.001))
        self.workdir = tmp / "wd"
        self.proc = agents.start(run_id, str(store.root), self.workdir, [sys.executable, TRAINER, str(self.control),
                                 *trainer_args], env=ENV, extra=[*FAST, *extra])
        self.watcher = Watcher(self.rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())),
                               self.settings)

    def steer(self, **control) -> None:
        """Rewrite the control file and wait until the trainer has applied it."""
        self.gen += 1
        write_atomic(self.control, json.dumps({"gen": self.gen, **control}))
        ack = self.control.with_name(self.control.name + ".ack")
        wait_for(lambda: ack.exists() and json.loads(ack.read_text() or "null") == self.gen, 60,
                 f"the trainer to apply {control}")

    def heads(self) -> list[str]:
        """One sweep of the real watcher at the real time; the headline of every post so far."""
        self.watcher.sweep(time.time())
        return headlines(self.slack)

    def wait_sent(self, head: str, what: str) -> list[str]:
        """Sweep until a post starting with `head` was delivered; then a few sweeps more."""
        wait_for(lambda: any(h.startswith(head) for h in self.heads()), 90, what)
        for _ in range(SWEEPS_MORE):
            heads = self.heads()
        return heads

    def wait_posts(self, n: int, what: str) -> list[str]:
        """Sweep until `n` posts were delivered; then a few sweeps more, which must send nothing."""
        wait_for(lambda: len(self.heads()) >= n, 90, what)
        for _ in range(SWEEPS_MORE):
            heads = self.heads()
        assert len(heads) == n, heads
        return heads

    def history(self) -> list[dict]:
        try:
            return self.rs.read_history(self.run_id)
        except Exception:  # noqa: BLE001 - not written yet / mid-write: look again
            return []

    def samples(self) -> dict:
        try:
            return json.loads(self.rs.store.get(self.rs.k(self.run_id, SAMPLES)))
        except Exception:  # noqa: BLE001 - not written yet
            return {}

    def finish(self) -> list[str]:
        """End the trainer; the run completes and its completion is the last post. No incident, ever."""
        write_atomic(self.control, json.dumps({"gen": self.gen + 1, "end": True}))
        assert self.agents.wait(self.proc, 120) == 0, Agents.output(self.proc)
        heads = wait_for(lambda: (h := self.heads()) and h[-1].startswith("✅") and h, 60, "the completion")
        assert not L.load(self.rs, self.run_id).ledger.warnings  # a finished run carries none
        return heads


def said(heads: list[str]) -> list[str]:
    """The headlines without the resolve's duration ("... cleared: memory after 3s")."""
    return [h.split(" after ")[0] for h in heads]


def assert_no_incident(run: Steered, heads: list[str]) -> None:
    """Warnings only (their own label and status), never an incident (hung, failed, silent)."""
    assert all(h.startswith(("🟡 Warning: ", "🟢 Warning cleared: ")) for h in heads), heads
    warn_posts = [p["body"]["text"] for p in run.slack.posts]
    assert all("\nStatus: WARNING\n" in t for t in warn_posts if t.startswith("🟡")), warn_posts
    assert not any(w in t.lower() for t in warn_posts for w in ("hung", "failed", "agent_silent")), warn_posts
    assert L.load(run.rs, run.run_id).ledger.incident is None


def test_memory_pressure_against_the_runs_ram_warns_once_then_clears(agents, tmp_path, local_store, slack):
    # The run may use 0.5 GiB; warn above half of it. The agent and trainer hold well under that
    # until the trainer holds 320 MB more, real touched memory, then frees it.
    run = Steered("warnmem-20260101-120000", agents, tmp_path, local_store, slack,
                  WarningSettings(ram_share=0.5), extra=("--ram-total-gb", "0.5"), loss="falling")
    s = wait_for(lambda: (s := run.samples()) and len(s.get("ram_used_bytes") or []) >= 2 and s, 60,
                 "the first samples")
    assert s["ram_total_bytes"] == GIB // 2 and 0 < s["ram_used_bytes"][-1] < GIB // 4, s  # the run, not the host
    assert run.heads() == []
    run.steer(loss="falling", alloc_mb=320)
    heads = run.wait_sent("🟡 Warning: memory", "the memory warning")
    assert heads == ["🟡 Warning: memory"], heads  # once, however many sweeps saw it
    assert "of 0.5 GiB in use" in run.slack.posts[0]["body"]["text"]
    assert_no_incident(run, heads)
    run.steer(loss="falling", alloc_mb=0)
    heads = run.wait_sent("🟢 Warning cleared: memory", "the memory warning to clear")
    assert said(heads) == ["🟡 Warning: memory", "🟢 Warning cleared: memory"], heads
    assert_no_incident(run, heads)
    heads = run.finish()
    assert len(heads) == 3 and heads[2].startswith("✅"), heads  # then only the completion


def test_a_loss_that_does_not_fall_then_a_spike_each_warn_once_then_clear(agents, tmp_path, local_store, slack):
    # Our trainer's contract (the progress file); the loss judged after 20 logged steps, not 100.
    run = Steered("warnflat-20260101-120000", agents, tmp_path, local_store, slack,
                  WarningSettings(no_learning_steps=20, spike_k=5.0), trainer_args=("--progress-file",), loss=2.0)
    wait_for(lambda: len(run.history()) > 20, 60, "more than 20 logged steps in history.json")
    heads = run.wait_sent("🟡 Warning: no_learning", "the no-learning warning")
    assert heads == ["🟡 Warning: no_learning"], heads
    assert "loss not falling: 2 at step" in run.slack.posts[0]["body"]["text"]
    run.steer(loss=1.0)  # learning now: lower than at the start
    heads = run.wait_sent("🟢 Warning cleared: no_learning", "the no-learning warning to clear")
    assert said(heads) == ["🟡 Warning: no_learning", "🟢 Warning cleared: no_learning"], heads
    # One step at 50x the running median stays the curve's latest point while steps go on without a loss.
    run.steer(loss=50.0, hold=True)
    heads = run.wait_posts(3, "the loss-spike warning")
    assert said(heads) == ["🟡 Warning: no_learning", "🟢 Warning cleared: no_learning", "🟡 Warning: no_learning"]
    assert "loss spike: 50 at step" in run.slack.posts[2]["body"]["text"], run.slack.posts[2]["body"]["text"]
    assert_no_incident(run, heads)
    run.steer(loss=0.9)
    heads = run.wait_posts(4, "the loss-spike warning to clear")
    assert said(heads)[3] == "🟢 Warning cleared: no_learning", heads
    assert_no_incident(run, heads)
    heads = run.finish()
    assert len(heads) == 5 and heads[4].startswith("✅"), heads


def test_eval_loss_rising_k_evaluations_in_a_row_warns_once_then_clears(agents, tmp_path, local_store, slack):
    # HF-Trainer-style log dicts read from the output; the train loss falls all along.
    run = Steered("warnfit-20260101-120000", agents, tmp_path, local_store, slack,
                  WarningSettings(overfit_evals=3), loss="falling")
    run.steer(evals=[1.0, 1.1, 1.2])  # rose twice: not yet
    wait_for(lambda: [h["eval_loss"] for h in run.history() if "eval_loss" in h] == [1.0, 1.1, 1.2], 60,
             "three evaluations in history.json")
    assert run.heads() == []
    run.steer(evals=[1.3])
    heads = run.wait_sent("🟡 Warning: overfitting", "the overfitting warning")
    assert heads == ["🟡 Warning: overfitting"], heads
    assert "eval loss rose 3 evaluations in a row: 1 -> 1.1 -> 1.2 -> 1.3" in run.slack.posts[0]["body"]["text"]
    assert_no_incident(run, heads)
    run.steer(evals=[0.9])  # fell: the run generalises again
    heads = run.wait_sent("🟢 Warning cleared: overfitting", "the overfitting warning to clear")
    assert said(heads) == ["🟡 Warning: overfitting", "🟢 Warning cleared: overfitting"], heads
    assert_no_incident(run, heads)
    heads = run.finish()
    assert len(heads) == 3 and heads[2].startswith("✅"), heads


def test_history_is_rewritten_at_its_interval_and_once_more_at_the_end(agents, tmp_path, local_store, slack):
    # An hour between rewrites (a later --history-s wins over FAST's): only the first write (at the
    # first progress: the phase, or a step or more) lands while the run goes on; the end writes it all.
    run = Steered("warnhist-20260101-120000", agents, tmp_path, local_store, slack,
                  extra=("--history-s", "3600"), trainer_args=("--progress-file",), loss="falling")
    wait_for(lambda: run.rs.store.exists(run.rs.k(run.run_id, HISTORY)), 60, "the first history.json")
    first = run.history()
    wait_for(lambda: ((pr := run.rs.read_progress(run.run_id)) and pr.step or 0) > len(first) + 10, 60,
             "ten more steps in progress.json")
    assert run.history() == first  # not rewritten within the hour
    run.finish()
    logged = [json.loads(line) for line in (run.workdir / WD_PROGRESS).read_text().splitlines()]
    assert [h["loss"] for h in run.history()] == [r["loss"] for r in logged if "loss" in r]
