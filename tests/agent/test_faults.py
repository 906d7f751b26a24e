"""Faults with real processes: an S3 outage (moto stopped and restarted) and an agent SIGKILLed and
restarted. Every printed line must arrive once, in order, byte for byte."""

from __future__ import annotations

import os
import signal
import time

import psutil

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.trainers.fake_trainer import expected_lines
from tests.trainers.harness import Agents, chunk_seqs, trainer_cmd, wait_for

RUN = "fault-20260101-120000"


def _s3(server):
    bucket = server.new_bucket()
    store = S3Store(bucket, "training-runs", endpoint_url=server.endpoint, region=REGION)
    return RunStore(store), f"s3://{bucket}/training-runs"


def _size(path) -> int:
    return path.stat().st_size if path.exists() else 0


def test_store_outage_loses_nothing_and_never_blocks_the_trainer(agents, private_moto, tmp_path):
    rs, url = _s3(private_moto)
    wd = tmp_path / "wd"
    n = 700
    proc = agents.start(RUN, url, wd, trainer_cmd("--lines", str(n), "--interval", "0.02", "--adapter", "ok"),
                        env=private_moto.env(), endpoint=private_moto.endpoint)
    wait_for(lambda: len(chunk_seqs(rs, RUN)) >= 2, what="first chunks")
    private_moto.stop()
    spool_at_outage = _size(wd / "trainer.log")
    # Events, not a fixed outage: the agent saw the store gone and the trainer kept writing (100 more lines).
    wait_for(lambda: "store unreachable" in Agents.output(proc), 120, "the agent to notice the outage")
    wait_for(lambda: _size(wd / "trainer.log") > spool_at_outage + 100 * 30, 120, "the trainer to keep writing")
    assert proc.poll() is None
    private_moto.start()
    assert agents.wait(proc, 90) == 0, Agents.output(proc)
    assert rs.read_logs(RUN).data == b"".join(expected_lines(n))
    seqs = chunk_seqs(rs, RUN)
    assert seqs == list(range(1, len(seqs) + 1))
    assert rs.read_complete(RUN) is not None and rs.read_error(RUN) is None


def test_agent_sigkill_and_restart_resumes_from_cursor(agents, moto_server, tmp_path):
    rs, url = _s3(moto_server)
    wd = tmp_path / "wd"
    n = 500
    cmd = trainer_cmd("--lines", str(n), "--interval", "0.012", "--adapter", "ok")
    first = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    wait_for(lambda: len(chunk_seqs(rs, RUN)) >= 3, what="first chunks")
    trainer_pid = int((wd / "trainer.pid").read_text())
    at = _size(wd / "trainer.log")
    first.kill()
    first.wait(10)
    # The trainer survives the agent: it prints on with no agent (or, on a slow day, ends normally).
    wait_for(lambda: _size(wd / "trainer.log") > at or (wd / "exit_status").exists(), 60, "the trainer after the kill")
    assert psutil.pid_exists(trainer_pid) or '"exit_code": 0' in (wd / "exit_status").read_text()
    second = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    assert agents.wait(second, 60) == 0, Agents.output(second)
    out = Agents.output(second)
    assert "resumed" in out or "ended while the agent was down" in out, out
    assert rs.read_logs(RUN).data == b"".join(expected_lines(n))
    seqs = chunk_seqs(rs, RUN)
    assert seqs == list(range(1, len(seqs) + 1))
    assert rs.read_complete(RUN) is not None
    assert rs.read_metadata(RUN).agent_pid == second.pid


def test_trainer_ends_while_agent_is_down_status_recovered(agents, moto_server, tmp_path):
    rs, url = _s3(moto_server)
    wd = tmp_path / "wd"
    cmd = trainer_cmd("--lines", "80", "--interval", "0.02", "--exit", "3",
                      "--tail", "OSError: [Errno 28] No space left on device: '/mnt/training/ckpt'")
    first = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    wait_for(lambda: (wd / "trainer.pid").exists(), what="trainer started")
    first.kill()
    first.wait(10)
    wait_for(lambda: (wd / "exit_status").exists(), what="trainer exit status")
    second = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    assert agents.wait(second, 60) == 0, Agents.output(second)
    err = rs.read_error(RUN)
    assert err.cause == "disk_full" and err.exit_code == 3
    assert rs.read_logs(RUN).data.startswith(b"".join(expected_lines(80)))


def test_trainer_lost_while_agent_is_down(agents, moto_server, tmp_path):
    rs, url = _s3(moto_server)
    wd = tmp_path / "wd"
    ready = tmp_path / "ready"
    cmd = trainer_cmd("--lines", "5", "--end", "hang", "--ready-file", str(ready))
    first = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    wait_for(ready.exists, what="trainer ready")
    first.kill()
    first.wait(10)
    pgid = int((wd / "wrapper.pid").read_text())
    os.killpg(pgid, signal.SIGKILL)  # trainer and wrapper die together: no exit status is written
    wait_for(lambda: not psutil.pid_exists(pgid) or psutil.Process(pgid).status() == psutil.STATUS_ZOMBIE,
             what="process group gone")
    second = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    assert agents.wait(second, 60) == 0, Agents.output(second)
    err = rs.read_error(RUN)
    assert err.cause == "trainer_lost" and "agent was down" in err.summary
    assert not (wd / "exit_status").exists()


def test_restarted_agent_after_marker_does_nothing(agents, moto_server, tmp_path):
    rs, url = _s3(moto_server)
    wd = tmp_path / "wd"
    cmd = trainer_cmd("--lines", "5")
    assert agents.wait(agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)) == 0
    chunks = chunk_seqs(rs, RUN)
    again = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    assert agents.wait(again) == 0
    assert "already has a terminal marker" in Agents.output(again)
    assert chunk_seqs(rs, RUN) == chunks and rs.read_error(RUN) is None


def test_store_down_when_the_agent_starts(agents, private_moto, tmp_path):
    rs, url = _s3(private_moto)
    private_moto.stop()
    wd = tmp_path / "wd"
    proc = agents.start(RUN, url, wd, trainer_cmd("--lines", "150", "--interval", "0.02"),
                        env=private_moto.env(), endpoint=private_moto.endpoint)
    wait_for(lambda: _size(wd / "trainer.log") > 50 * 30, what="trainer writing while the store is down")
    # The start-up probe found the store down and called it transient: the trainer started anyway.
    assert "store probe:" in Agents.output(proc) and "looks transient" in Agents.output(proc), Agents.output(proc)
    private_moto.start()
    assert agents.wait(proc, 60) == 0, Agents.output(proc)
    assert rs.read_logs(RUN).data == b"".join(expected_lines(150))
    assert rs.read_complete(RUN) is not None and rs.read_metadata(RUN).phase == "completed"


def test_repeated_agent_kills_lose_and_duplicate_nothing(agents, moto_server, tmp_path):
    rs, url = _s3(moto_server)
    wd = tmp_path / "wd"
    n = 700
    cmd = trainer_cmd("--lines", str(n), "--interval", "0.01", "--adapter", "ok")
    for delay in (0.9, 1.3, 0.6):  # kills land at different points of the ship/commit cycle
        proc = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
        wait_for(lambda: (wd / "trainer.pid").exists(), what="trainer started")
        time.sleep(delay)
        proc.kill()
        proc.wait(10)
    last = agents.start(RUN, url, wd, cmd, env=moto_server.env(), endpoint=moto_server.endpoint)
    assert agents.wait(last, 60) == 0, Agents.output(last)
    assert rs.read_logs(RUN).data == b"".join(expected_lines(n))
    seqs = chunk_seqs(rs, RUN)
    assert seqs == list(range(1, len(seqs) + 1))
    assert rs.read_complete(RUN) is not None
