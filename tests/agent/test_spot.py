"""The agent's spot path with a fake trainer (fast): a trainer that ignores SIGTERM is killed once the
checkpoint budget is spent and the run is still recorded as interrupted, saying no checkpoint
was saved; an agent whose IMDS never answers runs the trainer to completion as usual."""

from __future__ import annotations

import socket

import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from tests.fixtures.imds import ImdsStandIn
from tests.trainers.harness import Agents, trainer_cmd, wait_for

RUN = "spotfake-20260101-120000"


@pytest.fixture
def imds():
    s = ImdsStandIn()
    yield s
    s.close()


def test_a_trainer_that_ignores_sigterm_is_killed_after_the_budget(agents, imds, tmp_path):
    store = tmp_path / "store"
    ready = tmp_path / "ready"
    proc = agents.start(RUN, str(store), tmp_path / "wd",
                        trainer_cmd("--lines", "5", "--end", "hang-stubborn", "--ready-file", str(ready)),
                        extra=["--imds-endpoint", imds.endpoint, "--imds-poll-s", "0.1", "--spot-checkpoint-s", "0.5"])
    wait_for(ready.exists, 30, "the trainer's lines")
    imds.interrupt("stop", "2026-11-22T01:02:03Z")
    assert agents.wait(proc, 60) == 0, Agents.output(proc)
    err = RunStore(LocalStore(store)).read_error(RUN)
    assert err.cause == "interrupted" and err.signal == "SIGKILL", err
    assert err.summary.startswith("spot interruption (stop at 2026-11-22T01:02:03Z)")
    assert "no checkpoint was saved" in err.summary and err.checkpoint is None
    out = Agents.output(proc)
    assert "spot interruption notice" in out and "SIGKILL" in out


def test_imds_that_never_answers_turns_the_watch_off_quietly(agents, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd", trainer_cmd("--lines", "30", "--interval", "0.02"),
                        extra=["--imds-endpoint", dead, "--imds-poll-s", "0.05"])
    assert agents.wait(proc, 60) == 0, Agents.output(proc)
    assert RunStore(LocalStore(store)).read_complete(RUN) is not None
    assert Agents.output(proc).count("spot interruption watch off") == 1
