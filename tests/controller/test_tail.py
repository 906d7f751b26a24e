"""`ctl tail`, `ctl status`, `ctl stop` against runs written with RunStore (local folder and moto S3)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from controller.views.facts import read_facts
from controller.views.status import collect, render, request_stop
from controller.views.tail import RUNNING, STALE, Tail, last_lines_cursor, status_line
from ops.ec2 import Ec2Enricher
from ops.state import assess
from trainctl.cli import main

RID = "tail-20250101-000000"
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]


def make_run(rs: RunStore, chunks: list[str], hb_age: float | None = 1.0, heartbeat_s: float = 30.0):
    now = time.time()
    rs.write_metadata(p.Metadata(run_id=RID, created=now - 100, heartbeat_s=heartbeat_s, instance_id="i-0123456789abcdef0",
                                 region="us-east-1", host="ubuntu@10.0.0.1:22"))
    for i, text in enumerate(chunks, 1):
        rs.put_log_chunk(RID, i, text.encode())
    if hb_age is not None:
        rs.write_heartbeat(RID, p.Heartbeat(ts=now - hb_age, seq=1, agent_pid=42, trainer_alive=True,
                                            heartbeat_s=heartbeat_s, phase="training"))
    rs.write_progress(RID, p.Progress(ts=now, step=120, total_steps=3000, loss=1.83, tokens_per_s=2150.0,
                                      eta_s=3700, phase="training"))


@pytest.fixture
def rs(local_store):
    return RunStore(local_store)


def test_last_lines_reads_only_the_tail(rs):
    make_run(rs, [f"line {i}\n" for i in range(1, 51)])
    data, cursor = last_lines_cursor(rs, RID, 3)
    assert data == b"line 48\nline 49\nline 50\n"
    assert cursor.endswith("00000050.log")
    assert last_lines_cursor(rs, RID, 0)[0] == b""


def test_follow_prints_new_chunks_then_exits_0_on_complete(rs):
    make_run(rs, ["a\n", "b\n"])
    out = io.StringIO()
    t = Tail(rs, RID, poll_s=0.01, out=out, err=io.StringIO())
    t.cursor = last_lines_cursor(rs, RID, 1)[1]
    polls = []

    def fake_sleep(_s):
        polls.append(1)
        if len(polls) == 1:
            rs.put_log_chunk(RID, 3, b"c\n")
        if len(polls) == 2:
            rs.put_log_chunk(RID, 4, b"final line\n")
            rs.write_complete(RID, p.CompleteMarker(ts=time.time(), duration_s=3725, final_metrics={"loss": 0.9}))

    t.sleep = fake_sleep
    assert t.run() == 0
    text = out.getvalue()
    assert text.startswith("c\nfinal line\n") and "a\n" not in text  # never replays what was shown
    assert "COMPLETED in 1h 02m" in text and "loss 0.9" in text


def test_error_marker_exits_1_with_cause_and_fix(rs):
    make_run(rs, ["Traceback...\n", "torch.OutOfMemoryError: CUDA out of memory\n"])
    rs.write_error(RID, p.ErrorMarker(ts=time.time(), cause="GPU out of memory", exit_code=1,
                                      remediation="lower per_device_batch_size or max_seq_len"))
    out = io.StringIO()
    assert Tail(rs, RID, out=out).run() == 1
    assert "CUDA out of memory" in out.getvalue()  # the last log lines come first
    assert "FAILED (exit code 1): GPU out of memory" in out.getvalue()
    assert "fix: lower per_device_batch_size" in out.getvalue()


def test_diverged_run_with_nan_strings_renders(rs):
    make_run(rs, ["step 4\n"])
    rs.write_progress(RID, p.Progress(ts=time.time(), step=5, total_steps=40, loss="nan", phase="training"))
    rs.write_error(RID, p.ErrorMarker(ts=time.time(), cause="training diverged", remediation="lower the lr",
                                      last_step=5, last_loss="nan"))
    out = io.StringIO()
    assert Tail(rs, RID, out=out).run() == 1
    assert "last step: 5, loss nan" in out.getvalue()
    assert "loss nan" in render(collect(rs, RID, time.time()), time.time())
    assert "loss nan" in status_line(rs.read_progress(RID), None, time.time())


def test_stale_heartbeat_exits_3(rs):
    make_run(rs, ["x\n"], hb_age=500)
    out = io.StringIO()
    assert Tail(rs, RID, out=out).run() == 3
    assert "STALE" in out.getvalue() and "expected every 30s" in out.getvalue()
    assert Tail(rs, RID, out=io.StringIO(), stale_after_s=1000).run(follow=False) == 0


def test_stale_is_the_watchers_heartbeat_plus_grace_and_status_line_is_pure(rs):
    """`ctl tail` stops as stale exactly when the watcher says agent_silent: heartbeat + grace, not 3 beats + 30 s."""
    md = p.Metadata(run_id=RID, created=1000.0, heartbeat_s=10)
    hb = p.Heartbeat(ts=1000.0, seq=3, agent_pid=1, trainer_alive=True, heartbeat_s=10)
    rs.write_metadata(md)
    for now, code, state in ((1069.0, RUNNING, "late"), (1071.0, STALE, "agent_silent")):
        rs.write_heartbeat(RID, hb)
        t = Tail(rs, RID, out=io.StringIO(), err=io.StringIO(), clock=lambda n=now: n)
        assert t.check_once() == code and t.state.state == state
        assert t.state.reason == assess(read_facts(rs, RID), now).reason
    t = Tail(rs, RID, out=io.StringIO(), err=io.StringIO(), clock=lambda: 1071.0, stale_after_s=100)
    assert t.check_once() == RUNNING and t.state.state == "late"  # --stale-after-s is the grace
    pr = p.Progress(ts=1.0, step=120, total_steps=3000, loss=1.83, tokens_per_s=2150.0, eta_s=3700, phase="training")
    assert status_line(pr, hb, 1012.0) == ("phase training | step 120/3000 | loss 1.8300 | 2,150 tok/s | "
                                           "ETA 1h 01m | heartbeat 12s ago")


def test_launch_without_heartbeat_is_stale_at_the_watchers_launch_timeout(rs):
    rs.write_metadata(p.Metadata(run_id=RID, created=1000.0, heartbeat_s=10))
    t = Tail(rs, RID, out=io.StringIO(), err=io.StringIO(), clock=lambda: 1900.0)
    assert t.check_once() == RUNNING and t.state.state == "launching"
    out = io.StringIO()
    t = Tail(rs, RID, out=out, err=io.StringIO(), clock=lambda: 1901.0)
    assert t.check_once() == STALE and "never started" in out.getvalue() and "agent_silent" in out.getvalue()


def test_store_outage_is_retried_with_backoff(private_moto):
    bucket = private_moto.new_bucket()
    rs = RunStore(S3Store(bucket, "runs", endpoint_url=private_moto.endpoint, region="us-east-1", max_attempts=1,
                          timeout=2))
    make_run(rs, ["before outage\n"])
    out, err = io.StringIO(), io.StringIO()
    t = Tail(rs, RID, poll_s=0.05, max_backoff_s=0.2, out=out, err=err)
    result = {}
    private_moto.stop()
    th = threading.Thread(target=lambda: result.setdefault("code", t.run()), daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while "store unreachable" not in err.getvalue():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    private_moto.start()
    rs.put_log_chunk(RID, 2, b"after outage\n")
    rs.write_complete(RID, p.CompleteMarker(ts=time.time(), duration_s=5))
    th.join(30)
    assert result.get("code") == 0
    assert "before outage\nafter outage\n" in out.getvalue()
    assert "retrying in" in err.getvalue()


def _signal_state(pid: int) -> str:
    """The kernel's view of a process that did not act on a signal: stopped (T) or not, and its masks."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"no /proc entry ({exc})"
    return "; ".join(x for x in lines if x.split(":")[0] in ("State", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn",
                                                            "SigCgt"))


def test_ctrl_c_stops_only_the_tail(tmp_path):
    from agent.protocol.store_local import LocalStore

    store = tmp_path / "store"
    make_run(RunStore(LocalStore(store)), ["hello\n"])
    # Ctrl-C reaches a command in the foreground of a terminal, where SIGINT is at its default. A suite
    # started in the background (`make test &`, nohup, some CI runners) hands every child SIGINT ignored,
    # and Python then installs no KeyboardInterrupt at all: the ctl under test gets the terminal's default
    # back, as the user's would have it.
    fg = [CTL[0], "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + CTL[2]]
    proc = subprocess.Popen([*fg, "tail", RID, "--store", str(store), "--poll-s", "0.1", "--stale-after-s", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "hello\n"
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ctl tail still running 20 s after SIGINT: {_signal_state(proc.pid)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "the run goes on" in err and "Traceback" not in err


def test_status_screen_json_and_instance_state(moto_server, tmp_path):
    from agent.protocol.store_local import LocalStore

    ec2 = moto_server.client("ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=ami, InstanceType="g5.2xlarge", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[iid])
    rs = RunStore(LocalStore(tmp_path / "store"))
    make_run(rs, ["x\n"])
    md = rs.read_metadata(RID)
    md.instance_id = iid
    rs.write_metadata(md)
    env = {**os.environ, **moto_server.env(), "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint}
    r = subprocess.run([*CTL, "status", RID, "--store", str(tmp_path / "store"), "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["instance_state"] == "stopped" and d["step"] == 120 and d["outcome"] == "running"
    assert d["state"] == "instance_gone" and f"instance {iid} was stopped by a user" in d["reason"]  # as the watcher
    screen = render(collect(rs, RID, time.time(), Ec2Enricher(moto_server.endpoint)), time.time())
    assert f"instance   {iid}" in screen and "stopped" in screen and "step       120/3000" in screen
    assert "state      instance_gone: instance " in screen


def test_stop_writes_control_stop_once(rs, local_store):
    make_run(rs, ["x\n"])
    r = CliRunner().invoke(main, ["stop", RID, "--store", local_store.url])
    assert r.exit_code == 0 and "stop requested" in r.output
    assert rs.read_stop(RID) is not None
    assert request_stop(rs, RID) == "already_requested"
    r = CliRunner().invoke(main, ["stop", RID, "--store", local_store.url, "--wait", "--timeout-s", "0.3",
                                  "--poll-s", "0.1"])
    assert r.exit_code == 3 and "has not stopped" in r.output
    rs.write_error(RID, p.ErrorMarker(ts=time.time(), cause="stopped", remediation="none needed"))
    assert request_stop(rs, RID) == "finished"


def test_unknown_run_and_bad_run_id_are_clean_errors(local_store):
    r = CliRunner().invoke(main, ["tail", "nope-20250101-000000", "--store", local_store.url])
    assert r.exit_code == 1 and "not found" in r.output
    r = CliRunner().invoke(main, ["status", "../etc", "--store", local_store.url])
    assert r.exit_code == 2 and "invalid run id" in r.output


def test_status_line_only_on_a_terminal(tmp_path):
    from agent.protocol.store_local import LocalStore

    store = tmp_path / "store"
    make_run(RunStore(LocalStore(store)), ["hello\n"])
    cmd = [*CTL, "tail", RID, "--store", str(store), "--no-follow"]
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == "hello\n"  # scripts get the log and nothing else
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.DEVNULL)
        proc.wait(60)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"phase training | step 120/3000 | loss 1.8300" in out and b"heartbeat" in out


def test_tail_shows_the_last_frame_of_each_carriage_return_line(tmp_path):
    """Issue 12: a tqdm bar split over chunks (and over the --lines cursor) reads as its last frame;
    the stored chunks stay byte-exact."""
    from agent.protocol.store_local import LocalStore

    store = tmp_path / "store"
    rs = RunStore(LocalStore(store))
    frames = [f"\r{i}/30 [00:{i:02d}<00:10, 1.11it/s]" for i in range(1, 31)]
    chunks = ["loading\n", "".join(frames[:10]), "".join(frames[10:20]), "".join(frames[20:]) + "\n",
              "{'loss': '6.63'}\r\n", "done\n"]
    make_run(rs, chunks)
    assert rs.read_logs(RID).data == "".join(chunks).encode()
    want = "loading\n30/30 [00:30<00:10, 1.11it/s]\n{'loss': '6.63'}\ndone\n"
    r = subprocess.run([*CTL, "tail", RID, "--store", str(store), "--no-follow", "--from-start"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == want, r.stdout
    r = subprocess.run([*CTL, "tail", RID, "--store", str(store), "--no-follow", "--lines", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == want.split("\n", 1)[1], r.stdout
    out = io.StringIO()
    t = Tail(rs, RID, out=out, err=io.StringIO())
    t.show("".join(chunks[:3]).encode())  # the run stops mid-bar: its latest frame is shown when the tail ends
    assert out.getvalue() == "loading\n"
    t._flush_log()
    assert out.getvalue() == "loading\n20/30 [00:20<00:10, 1.11it/s]\n"


def test_status_shows_the_hang_evidence(rs):
    make_run(rs, ["x\n"])
    now = time.time()
    rs.write_heartbeat(RID, p.Heartbeat(
        ts=now - 1, seq=2, agent_pid=42, trainer_alive=True, phase="training", last_step=120,
        last_progress_ts=now - 121, progress_source="trainer", last_log_ts=now - 111,
        gpus=[{"index": 0, "util_percent": 0}],
        cadence={"step_p50_s": 9.8, "hung_after_s": 60.0, "learned": True, "last_step_ts": now - 121}))
    d = collect(rs, RID, now)
    assert d["state"] == "hung" and d["evidence"] == ("steps every 9.8s, last step 2m 00s ago, hung after 1m 00s, "
                                                      "last log line 1m 50s ago, GPU util 0% (heartbeat)")
    assert f"evidence   {d['evidence']}" in render(d, now)
