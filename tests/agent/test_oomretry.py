"""Self-healing OOM for a user's own trainer: a real agent around the fake trainer (local folder
store). The restart passes the new sizes in TRAINCTL_MICRO_BATCH / TRAINCTL_GRAD_ACCUM and the
trainer's own resume flag, or does not happen; the store, the log and the marker tell the story."""

from __future__ import annotations

import pytest

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from controller.config import resolve
from controller.launch import plan
from tests.trainers.harness import Agents, trainer_cmd

RUN = "oom-20260101-120000"


def run(agents, tmp_path, oom_above: int, *extra: str):
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd",
                        trainer_cmd("--lines", "12", "--batch", "8", "--oom-above", str(oom_above), "--adapter", "ok"),
                        extra=list(extra))
    assert agents.wait(proc) == 0, Agents.output(proc)
    return RunStore(LocalStore(store)), Agents.output(proc)


def test_restart_at_half_the_batch_with_the_env_and_the_resume_flag(agents, tmp_path):
    rs, out = run(agents, tmp_path, 2, "--oom-retries", "3", "--micro-batch", "8", "--grad-accum", "1",
                  "--resume-arg=--resume")
    done = rs.read_complete(RUN)
    assert done is not None, out
    assert done.reason.endswith("recovered from OOM: batch 8 (step 11) -> 4 (step 11) -> 2")
    attempts = rs.store.get_json(f"{RUN}/{p.OOM_ATTEMPTS}")["attempts"]
    assert [(a["attempt"], a["micro_batch"], a["grad_accum"], a["next_micro_batch"], a["next_grad_accum"])
            for a in attempts] == [(1, 8, 1, 4, 2), (2, 4, 2, 2, 4)]
    assert rs.read_metadata(RUN).oom_attempts == attempts
    log = rs.read_logs(RUN).data.decode()
    said = [ln for ln in log.splitlines() if ln.startswith("micro-batch")]
    assert said == ["micro-batch 8 grad-accum - resume False", "micro-batch 4 grad-accum 2 resume True",
                    "micro-batch 2 grad-accum 4 resume True"]
    assert log.count("torch.OutOfMemoryError") == 2  # one ordered log across the three attempts


def test_still_failing_at_batch_1_fails_with_the_cause_and_the_attempts(agents, tmp_path):
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd", trainer_cmd("--lines", "12", "--batch", "2", "--oom-above", "0"),
                        extra=["--oom-retries", "5", "--micro-batch", "2", "--grad-accum", "4", "--resume-arg=--resume"])
    assert agents.wait(proc) == 0, Agents.output(proc)
    err = RunStore(LocalStore(store)).read_error(RUN)
    assert err.cause == "cuda_oom", Agents.output(proc)
    assert err.summary.endswith("; OOM retries: batch 2 (step 11) -> 1"), err.summary
    assert "cuda_oom at micro-batch 1: no OOM retry (already 1)" in Agents.output(proc)


def test_no_resume_flag_no_restart_and_retries_off_fails_as_today(agents, tmp_path):
    rs, out = run(agents, tmp_path, 2, "--oom-retries", "2", "--micro-batch", "8", "--grad-accum", "1")
    err = rs.read_error(RUN)
    assert err.cause == "cuda_oom" and "OOM retries" not in err.summary
    assert "no OOM retry (the trainer reported no batch sizes and no --resume-arg was given)" in out
    assert rs.store.get_json(f"{RUN}/{p.OOM_ATTEMPTS}") is None


def test_run_toml_oom_keys_reach_the_agent():
    ours = resolve({"trainer": {"config": "train.toml"}})
    assert plan.trainer_flags(ours) == ["--oom-retries", "2"]  # on for our trainer
    assert "--oom-retries" not in plan.trainer_flags(resolve({"trainer": {"command": ["python", "t.py"]}}))
    yours = resolve({"trainer": {"command": ["python", "t.py"], "oom_retries": 2, "micro_batch": 8, "grad_accum": 2,
                                 "resume_args": ["--resume_from_checkpoint", "latest"]}})
    assert plan.trainer_flags(yours) == ["--oom-retries", "2", "--micro-batch", "8", "--grad-accum", "2",
                                         "--resume-arg=--resume_from_checkpoint", "--resume-arg=latest"]
    assert plan.trainer_flags(resolve({"trainer": {"config": "t.toml", "oom_retries": 0}})) == []
    from agent.protocol.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.oom_retries: an OOM restart of your own trainer needs "
                                          "trainer.resume_args"):
        resolve({"trainer": {"command": ["python", "t.py"], "oom_retries": 1}})


def test_the_watcher_queues_one_recovered_notice_and_none_for_a_failed_run():
    from ops.alerts.ledger import Ledger
    from ops.alerts.policy import notice_oom
    from ops.state import FAILED, HEALTHY, RunFacts, RunState

    att = {"attempt": 1, "ts": 100.0, "micro_batch": 4, "grad_accum": 1, "step": 2, "next_micro_batch": 2,
           "next_grad_accum": 2}
    f = RunFacts(RUN)
    f.heartbeat = p.Heartbeat(ts=200.0, seq=3, agent_pid=1, trainer_alive=True, oom_attempts=[att])
    led = Ledger(RUN)
    assert notice_oom(led, f, RunState(HEALTHY, "ok"), 200.0)
    for now in (230.0, 260.0):  # later sweeps of the same run: nothing more
        assert not notice_oom(led, f, RunState(HEALTHY, "ok"), now)
    [msg] = led.outbox
    assert msg["kind"] == "notice" and msg["reason"].startswith("recovered from OOM: batch 4 -> 2 (grad_accum 1 -> 2")
    led.sent, led.outbox = [dict(msg)], []  # delivered: still once
    assert not notice_oom(led, f, RunState(HEALTHY, "ok"), 290.0)
    assert not notice_oom(Ledger(RUN), f, RunState(FAILED, "cuda_oom"), 300.0)  # its failure alert lists them
    assert not notice_oom(Ledger(RUN), RunFacts(RUN), RunState(HEALTHY, "ok"), 300.0)  # no restart, no notice
