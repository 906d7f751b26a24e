"""The fault-injection suite of issue 8, over real parts (agent subprocesses, moto S3/EC2, sshd, the
Slack stand-in, the watcher's real sweep). Every fault asserts that no log line was lost and that
Slack got exactly one alert (or one alert and one resolve), plus the run's final message.

The suite writes its own results table, docs/fault-suite.md (tests/e2e/faultlog.py): run
`pytest tests/e2e/test_faults.py` to regenerate it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from agent.protocol.errors import StoreError
from tests.e2e.faultlog import FaultSuite
from tests.e2e.fleet import HEARTBEAT_S, WATCH_HEARTBEAT_S, new_run, said
from tests.e2e.harness import (
    CTL,
    REPO,
    agent_pids,
    assert_lossless,
    ctl,
    ctl_env,
    end_run_processes,
    ledger_kinds,
    new_instance,
    run_toml,
    wait_for,
    wildcard_ssh_config,
)
from tests.fixtures.box import shared_folder
from tests.trainers.fake_trainer import expected_lines
from tests.trainers.harness import TRAINER, Agents, PinnedTrainer

pytestmark = pytest.mark.slow
FAULTS = set(range(1, 9))
DOC = REPO / "docs" / "fault-suite.md"
RUN = "fault-20260101-120000"
COMPLETED, SILENT, HUNG, GONE = "✅ Training completed", "🔇 Agent silent", "🧊 Training hung", "💀 Instance gone"


@pytest.fixture(scope="session")
def fault_suite(tmp_path_factory):
    """The results collector, shared by every xdist worker of this pytest run (see faultlog.py)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    suite = FaultSuite(root / "fault-suite", DOC, FAULTS)
    yield suite
    suite.finish()


def lines(n: int) -> bytes:
    return b"".join(expected_lines(n))


def test_fault_1_store_down_mid_run(agents, private_moto, slack, tmp_path, fault_suite):
    run = new_run(private_moto, RUN, tmp_path / "wd", slack, grace_s=30.0)
    n = 600
    proc = run.start(agents, "--lines", str(n), "--interval", "0.02", "--adapter", "ok")
    wait_for(lambda: run.chunks() >= 2, what="first chunks")
    run.sweep()
    private_moto.stop()
    at = (tmp_path / "wd" / "trainer.log").stat().st_size
    with pytest.raises(StoreError) as during:  # the watcher cannot read the store either, and says so
        run.sweep()
    down_at = time.monotonic()
    # The outage lasts until both events: the agent saw the store gone, and the trainer printed on through it
    # (100 more lines), however slow the machine is today.
    wait_for(lambda: "store unreachable" in Agents.output(proc), 120, "the agent to notice the outage")
    wait_for(lambda: (tmp_path / "wd" / "trainer.log").stat().st_size > at + 100 * 30, 120,
             "the trainer to keep printing through the outage")
    assert proc.poll() is None  # the agent rides the outage out; it never gives up on a transient store
    outage_s = time.monotonic() - down_at
    private_moto.start()
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    assert "store unreachable" in Agents.output(proc)
    got = assert_lossless(run.rs, RUN, lines(n))
    for _ in range(3):
        run.sweep()
    assert said(slack) == [COMPLETED]
    assert ledger_kinds(run.rs, RUN) == ["final:completed"]
    fault_suite.record(1, "S3 (moto) down mid-run", [
        f"fake trainer printing {n} numbered lines (0.02 s apart) under the real agent, S3 store on a private moto",
        f"after the first chunks: moto stopped (connection refused) until the agent logged `store unreachable` "
        f"and the trainer printed 100 more lines ({outage_s:.1f} s this run), then restarted",
        "watcher: grace 30 s (longer than the outage); swept before, during and 3x after"],
        ["trainer kept printing during the outage; agent logged `store unreachable` and caught up from its spool",
         f"stored log = trainer output byte for byte ({got} lines), chunk numbers contiguous; `_complete` written",
         f"sweep during the outage failed with {type(during.value).__name__} (nothing sent, nothing claimed)",
         "Slack: 1 post, `✅ Training completed`; no agent-silent alert"])


def test_fault_2_agent_sigkilled_and_restarted(agents, moto_server, slack, tmp_path, fault_suite):
    grace = 1.0
    run = new_run(moto_server, RUN, tmp_path / "wd", slack, grace_s=grace)
    n = 500
    args = ("--lines", str(n), "--interval", "0.03", "--adapter", "ok")
    first = run.start(agents, *args)
    wait_for(lambda: run.chunks() >= 3, what="first chunks")
    run.sweep()
    trainer_pid = int((tmp_path / "wd" / "trainer.pid").read_text())
    first.kill()
    first.wait(10)
    run.wait_silent(grace)
    run.sweep()
    run.sweep()
    assert said(slack) == [SILENT]
    assert os.path.exists(f"/proc/{trainer_pid}")  # the trainer outlives its agent
    second = run.start(agents, *args)
    run.wait_fresh(second.pid)
    run.sweep()
    assert said(slack) == [SILENT, "🟢 Resolved: agent silent"]
    assert agents.wait(second, 90) == 0, Agents.output(second)
    assert "resumed" in Agents.output(second)
    got = assert_lossless(run.rs, RUN, lines(n))
    run.sweep()
    run.sweep()
    assert said(slack) == [SILENT, "🟢 Resolved: agent silent", COMPLETED]
    assert ledger_kinds(run.rs, RUN) == ["alert:agent_silent", "resolved:healthy", "final:completed"]
    fault_suite.record(2, "agent SIGKILLed and restarted", [
        f"fake trainer printing {n} lines; after 3 chunks the agent got SIGKILL",
        f"watcher (agent beats every {HEARTBEAT_S:g} s, expected every {WATCH_HEARTBEAT_S:g} s, grace {grace:g} s) "
        "swept twice once the heartbeat was stale",
        "a new agent started for the same run and workdir; watcher swept again, and after the end"],
        ["the trainer survived its agent; the new agent resumed from the stored chunk cursor",
         f"stored log = trainer output byte for byte ({got} lines), chunk numbers contiguous",
         "Slack: `🔇 Agent silent` (once, for two stale sweeps), `🟢 Resolved: agent silent`, "
         "`✅ Training completed`"])


def test_fault_3_trainer_sigkilled(agents, moto_server, slack, tmp_path, fault_suite):
    run = new_run(moto_server, RUN, tmp_path / "wd", slack, grace_s=5.0)
    n, ready = 300, tmp_path / "ready"
    proc = run.start(agents, "--lines", str(n), "--interval", "0.005", "--end", "hang", "--ready-file", str(ready))
    wait_for(ready.exists, what="trainer printed everything")
    trainer = PinnedTrainer(tmp_path / "wd")
    trainer.send(signal.SIGKILL)  # what the OOM killer does
    trainer.close()
    assert agents.wait(proc, 60) == 0, Agents.output(proc)
    err = run.rs.read_error(RUN)
    assert err is not None and run.rs.read_complete(RUN) is None
    assert err.signal == "SIGKILL" and err.cause and err.remediation
    got = assert_lossless(run.rs, RUN, lines(n))
    for _ in range(3):
        run.sweep()
    assert said(slack) == [f"🔥 Training FAILED: {err.cause}"]
    text = slack.posts[0]["body"]["text"]
    assert err.remediation[:40] in text and "SIGKILL" in text
    t = ctl(["tail", RUN, "--store", run.url, "--endpoint-url", run.endpoint, "--poll-s", "0.2", "--lines", "3"],
            {**os.environ, **run.env, "PYTHONPATH": str(REPO)}, timeout=60)
    assert t.returncode == 1, t.stdout + t.stderr
    fault_suite.record(3, "trainer SIGKILLed (host OOM stand-in)", [
        f"fake trainer printed {n} lines then blocked; SIGKILL sent to the trainer's pid",
        "watcher swept 3x; `ctl tail` run on the finished run"],
        [f"agent wrote `_error`: signal SIGKILL, cause `{err.cause}`, with remediation",
         f"stored log = trainer output byte for byte ({got} lines), chunk numbers contiguous",
         f"Slack: 1 post, `🔥 Training FAILED: {err.cause}` with the remediation; `ctl tail` exit 1"])


def test_fault_4_trainer_sigstopped_then_sigcont(agents, moto_server, slack, tmp_path, fault_suite):
    timeout = 2.0
    run = new_run(moto_server, RUN, tmp_path / "wd", slack, grace_s=5.0, progress_timeout_s=timeout)
    n = 400
    proc = run.start(agents, "--lines", str(n), "--interval", "0.03", "--adapter", "ok")
    wait_for(lambda: (hb := run.heartbeat()) and hb.last_step, what="first progress")
    run.sweep()
    trainer = PinnedTrainer(tmp_path / "wd")
    trainer.stop()
    try:
        run.wait_stalled(timeout)
        run.sweep()
        run.sweep()
        assert said(slack) == [HUNG]
        stalled = run.heartbeat().last_progress_ts
    finally:
        trainer.resume()
        trainer.close()
    wait_for(lambda: (hb := run.heartbeat()) and hb.last_progress_ts > stalled and time.time() - hb.ts < HEARTBEAT_S,
             what="progress again")
    run.sweep()
    assert said(slack) == [HUNG, "🟢 Resolved: training hung"]
    assert agents.wait(proc, 90) == 0, Agents.output(proc)
    got = assert_lossless(run.rs, RUN, lines(n))
    run.sweep()
    run.sweep()
    assert said(slack) == [HUNG, "🟢 Resolved: training hung", COMPLETED]
    assert ledger_kinds(run.rs, RUN) == ["alert:hung", "resolved:healthy", "final:completed"]
    fault_suite.record(4, "trainer SIGSTOPped (hang), then SIGCONTed", [
        f"fake trainer printing {n} lines with progress; SIGSTOP to the trainer's pid",
        f"watcher (progress timeout {timeout:g} s) swept twice once progress was older than that, agent alive",
        "SIGCONT; watcher swept once progress moved again, and after the end"],
        ["agent heartbeats kept coming while the trainer was stopped",
         f"stored log = trainer output byte for byte ({got} lines), chunk numbers contiguous",
         "Slack: `🧊 Training hung` (once), `🟢 Resolved: training hung`, `✅ Training completed`"])


def test_fault_7_watcher_restarted_between_sweeps(agents, moto_server, slack, tmp_path, fault_suite):
    run = new_run(moto_server, RUN, tmp_path / "wd", slack, grace_s=30.0)
    n = 200
    tail = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    proc = run.start(agents, "--lines", str(n), "--interval", "0.02", "--exit", "1", "--tail", tail)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env.update(run.env, PYTHONPATH=str(REPO))
    args = ["watch", "--store", run.url, "--endpoint-url", run.endpoint, "--no-ec2", "--interval", "0.3",
            "--heartbeat-grace", "30s", "--slack-webhook", slack.webhook_url]
    watchers: list[tuple[subprocess.Popen, list[str]]] = []

    def start_watcher():
        p = subprocess.Popen([*CTL, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        out: list[str] = []
        threading.Thread(target=lambda: out.extend(iter(p.stderr.readline, "")), daemon=True).start()
        watchers.append((p, out))
        return out

    def sweeps(out) -> int:
        return sum(x.startswith("sweep:") for x in out)

    try:
        a = start_watcher()
        wait_for(lambda: sweeps(a) >= 2, what="watcher A sweeping")
        watchers[-1][0].kill()  # SIGKILL between sweeps, mid-run
        b = start_watcher()
        assert agents.wait(proc, 60) == 0, Agents.output(proc)
        wait_for(lambda: len(slack.posts) >= 1, what="the failure alert")
        seen = sweeps(b)
        wait_for(lambda: sweeps(b) >= seen + 2, what="watcher B sweeping on")
        watchers[-1][0].kill()
        c = start_watcher()
        wait_for(lambda: sweeps(c) >= 3, what="watcher C sweeping")
    finally:
        for p, _ in watchers:
            if p.poll() is None:
                p.kill()
            p.wait(10)
    got = assert_lossless(run.rs, RUN, lines(n) + (tail + "\n").encode())
    assert said(slack) == ["🔥 Training FAILED: cuda_oom"]
    assert ledger_kinds(run.rs, RUN) == ["final:failed"]
    assert "0 active" in "".join(c)  # the finished run left the active set: watcher C did not even look
    fault_suite.record(7, "watcher restarted between sweeps", [
        "`ctl watch --interval 0.3` (a real process) watching a run whose trainer fails with CUDA OOM",
        "watcher A SIGKILLed mid-run, B started; B SIGKILLed after it posted, C started and swept 3x"],
        [f"stored log = trainer output byte for byte ({got} lines incl. the error line), chunk numbers contiguous",
         "Slack: 1 post, `🔥 Training FAILED: cuda_oom`; the restarted watcher sent nothing again",
         "watcher C saw 0 active runs: the run's ledger was closed and indexed as done"])


def test_fault_8_slack_answers_429_then_500(agents, moto_server, slack, tmp_path, fault_suite):
    run = new_run(moto_server, RUN, tmp_path / "wd", slack, grace_s=30.0)
    n = 120
    tail = "OSError: [Errno 28] No space left on device: '/mnt/training/ckpt'"
    proc = run.start(agents, "--lines", str(n), "--exit", "3", "--tail", tail)
    assert agents.wait(proc, 60) == 0, Agents.output(proc)
    slack.fail_next(429, 1, retry_after=1)
    slack.fail_next(500, 1)
    first = run.sweep()
    assert first.sent == 0 and first.pending == 1 and slack.posts == []
    for _ in range(3):
        run.sweep()
    got = assert_lossless(run.rs, RUN, lines(n) + (tail + "\n").encode())
    statuses = [a["path"] for a in slack.attempts]
    assert len(statuses) == 3
    assert said(slack) == ["🔥 Training FAILED: disk_full"]
    assert ledger_kinds(run.rs, RUN) == ["final:failed"]
    fault_suite.record(8, "Slack answering 429 and 500", [
        "a run fails with disk full; the Slack stand-in answers the next post 429 (Retry-After 1) then 500",
        "watcher swept 4x"],
        [f"stored log = trainer output byte for byte ({got} lines incl. the error line), chunk numbers contiguous",
         "sweep 1: slack_sdk waited out the 429 and retried, got 500; the message stayed pending (sent 0)",
         "sweep 2 delivered it; sweeps 3-4 sent nothing: 3 requests, 1 post, `🔥 Training FAILED: disk_full`"])


@pytest.fixture
def box(moto_server, sshd, tmp_path, data_root):
    """A moto g5 instance reached through sshd (any IP: a restarted instance gets a new one), its data root
    mounted at <tmp_path>/box, and a shell env."""
    iid = new_instance(moto_server, sshd)
    env = ctl_env(moto_server, sshd, tmp_path / "home", wildcard_ssh_config(sshd, tmp_path / "ssh_config"))
    started: list[str] = []
    yield iid, env, started
    for rid in started:
        end_run_processes(rid, tmp_path / "box" / "trainctl" / "runs" / rid)


def test_fault_5_instance_stopped_mid_run(box, moto_server, slack, tmp_path, fault_suite):
    iid, env, started = box
    grace, timeout = 1.0, 2.0
    rid = "stopped-20260101-120000"
    run = new_run(moto_server, rid, tmp_path / "box" / "trainctl" / "runs" / rid, slack, grace_s=grace,
                  progress_timeout_s=timeout, ec2_endpoint=moto_server.endpoint)
    bucket = run.url.split("/")[2]
    n = 1500
    cfg = run_toml(tmp_path / "run.toml", bucket=bucket, endpoint=moto_server.endpoint, data_root=tmp_path / "box",
                   command=[sys.executable, TRAINER, "--lines", str(n), "--interval", "0.02", "--adapter", "ok"])
    started.append(rid)
    ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    wait_for(lambda: run.chunks() >= 2, what="first chunks")
    run.sweep()
    # The box powers off: EC2 says stopped, and the agent and trainer die with it.
    moto_server.client("ec2").stop_instances(InstanceIds=[iid])
    end_run_processes(rid, run.workdir)
    wait_for(lambda: (hb := run.heartbeat()) and time.time() - max(hb.ts, hb.last_progress_ts or 0)
             > WATCH_HEARTBEAT_S + grace + timeout + 0.3, what="heartbeat and progress to go stale")
    for _ in range(3):  # the agent is silent and training has not moved: both muted by instance_gone
        run.sweep()
    assert said(slack) == [GONE]
    assert "was stopped" in slack.posts[0]["body"]["text"]
    printed = (run.workdir / "trainer.log").read_bytes()
    assert printed and printed == lines(printed.count(b"\n"))  # whole lines, as the trainer printed them
    # Relaunching the same run starts the instance; the new agent ships what the spool still holds.
    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    assert f"starting stopped instance {iid}" in r.stdout
    wait_for(lambda: run.rs.read_error(rid), what="the relaunched agent's verdict")
    err = run.rs.read_error(rid)
    assert err.cause == "trainer_lost", err
    assert assert_lossless(run.rs, rid, printed) > 0
    for _ in range(2):
        run.sweep()
    assert said(slack) == [GONE, "🔥 Training FAILED: trainer_lost"]
    assert ledger_kinds(run.rs, rid) == ["alert:instance_gone", "final:failed"]
    fault_suite.record(5, "instance stopped in moto mid-run", [
        "`ctl launch --existing` of a fake trainer on a moto g5 (reached through sshd)",
        "mid-run: `stop_instances` in moto, and the agent and trainer SIGKILLed (the box powered off)",
        f"watcher with EC2 lookups (grace {grace:g} s, progress timeout {timeout:g} s) swept 3x once both were stale",
        "`ctl launch --existing` again for the same run id: it starts the instance, a new agent takes over"],
        ["Slack: `💀 Instance gone` (the instance was stopped) once; agent-silent and hung muted",
         "the new agent found the trainer gone without an exit status: `_error` cause `trainer_lost`",
         "stored log = what the trainer printed before the power-off, byte for byte, in whole lines "
         "(any tail still in the box's spool shipped by the new agent), chunk numbers contiguous",
         "Slack then: `🔥 Training FAILED: trainer_lost`; 2 posts in all"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A trainctl wheel built once for the module (the venv-mode launch installs it on the box)."""
    from controller.launch.wheel import build

    old = os.environ.get("TRAINCTL_HOME")
    os.environ["TRAINCTL_HOME"] = str(tmp_path_factory.mktemp("wheel-home"))
    try:
        return build(say=lambda m: None).path
    finally:
        os.environ.pop("TRAINCTL_HOME") if old is None else os.environ.update(TRAINCTL_HOME=old)


def test_fault_6_ssh_cut_during_launch_then_relaunch(box, moto_server, slack, tmp_path, wheel, fault_suite):
    iid, env, started = box
    rid = "sshcut-20260101-120000"
    run = new_run(moto_server, rid, tmp_path / "box" / "trainctl" / "runs" / rid, slack, grace_s=30.0)
    bucket = run.url.split("/")[2]
    n = 400
    shared = shared_folder(tmp_path / "gate")  # the box user's setup command writes here too
    gate, entered = shared / "release", shared / "in-setup"
    hold = f"touch {entered}; while [ ! -e {gate} ]; do sleep 0.1; done"
    cfg = run_toml(tmp_path / "run.toml", bucket=bucket, endpoint=moto_server.endpoint, data_root=tmp_path / "box",
                   command=[sys.executable, TRAINER, "--lines", str(n), "--interval", "0.02", "--adapter", "ok"],
                   wheel=wheel, setup_commands=[hold])
    started.append(rid)
    argv = [*CTL, "launch", "--existing", iid, "--config", str(cfg), "--run-id", rid]
    first = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: entered.exists() or first.poll() is not None, timeout=120, what="setup to reach the hold")
        assert first.poll() is None, "launch ended before the cut"
        first.kill()  # the client and its SSH connection die mid-setup
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    gate.touch()  # the orphaned setup command on the box may finish now
    assert not run.rs.run_exists(rid)
    again = ctl(argv[len(CTL):], env, check=0)
    assert f"run {rid} started" in again.stdout
    third = ctl(argv[len(CTL):], env)  # still running, or (on a slow day) already done: never a second trainer
    # Every correct refusal counts: the run may finish before this launch resolves it, or while it sets up.
    running = third.returncode == 0 and f"run {rid} is already running" in third.stdout
    finished = third.returncode == 2 and any(w in third.stderr for w in (
        f"run {rid} already finished", f"run {rid} finished while this launch was setting up"))
    assert running or finished, third.stdout + third.stderr
    assert "Traceback" not in third.stderr
    if third.returncode == 0:
        assert len(agent_pids(rid, run.workdir)) <= 1  # one agent (or none, if it finished a moment ago)
    wait_for(lambda: run.rs.read_complete(rid), what="_complete")
    trainer_log = (run.workdir / "trainer.log").read_bytes()
    assert trainer_log.count(expected_lines(1)[0]) == 1  # one trainer ran, once
    got = assert_lossless(run.rs, rid, lines(n))
    for _ in range(3):
        run.sweep()
    assert said(slack) == [COMPLETED]
    fault_suite.record(6, "SSH connection cut during launch, launch repeated", [
        "`ctl launch --existing` (venv mode) held inside a setup command on the box, then SIGKILLed: "
        "its SSH connection dies mid-setup",
        "the same launch run again, and once more"],
        ["nothing was recorded for the cut launch (no metadata); the repeat started the run, "
         "the one after found it already running (or finished)",
         f"one trainer ran, once; stored log = trainer output byte for byte ({got} lines)",
         "Slack: 1 post, `✅ Training completed`"])
