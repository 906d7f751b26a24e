"""Autostop: the pure decision table, then a real daemon process on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.daemon.autostop import IdleFacts, decide, read_state


@pytest.mark.parametrize("runs,ssh,since,idle_s,now,action,remaining", [
    ([], 0, 100.0, 60.0, 130.0, "idle", 30.0),
    ([], 0, 100.0, 60.0, 160.0, "stop", 0.0),
    ([], 0, 100.0, 60.0, 500.0, "stop", 0.0),
    (["r-20250101-000000"], 0, 100.0, 60.0, 500.0, "busy", 60.0),
    ([], 1, 100.0, 60.0, 500.0, "busy", 60.0),
    ([], 0, 100.0, None, 10_000.0, "idle", None),
])
def test_decide(runs, ssh, since, idle_s, now, action, remaining):
    v = decide(IdleFacts(now, runs, ssh), since, idle_s)
    assert v.action == action and v.remaining_s == remaining
    if action == "busy":
        assert v.idle_since == now  # the countdown restarts when the box is busy


def _start(tmp_path, idle="1s", extra_env=None):
    marker = tmp_path / "stopped"
    action = f"{sys.executable} -c \"import time,pathlib; pathlib.Path('{marker}').write_text(str(time.time()))\""
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "trainctl", "autostop", "--runs-root", str(tmp_path / "runs"),
                             "--after", idle, "--check-s", "0.1", "--action", action], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, marker


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def test_fires_after_idle_period_not_before(tmp_path):
    t0 = time.time()
    proc, marker = _start(tmp_path, "1s")
    try:
        assert proc.wait(30) == 0
        assert float(marker.read_text()) - t0 >= 1.0
        assert "autostop: idle for" in proc.stdout.read()
    finally:
        _stop(proc)


def test_not_while_a_run_is_active(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    run_dir = tmp_path / "runs" / "busy-20250101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "agent.pid").write_text(str(sleeper.pid))
    proc, marker = _start(tmp_path, "0.5s")
    try:
        time.sleep(2.5)
        assert not marker.exists() and proc.poll() is None
        state = read_state(tmp_path / "runs")
        assert state["action"] == "busy" and "1 active run" in state["reason"]
        sleeper.kill()
        sleeper.wait()
        assert proc.wait(30) == 0 and marker.exists()
    finally:
        sleeper.kill()
        _stop(proc)


def test_not_while_an_interactive_ssh_session_is_open(tmp_path, sshd):
    session = subprocess.Popen(["ssh", "-F", str(sshd.ssh_config), "-tt", "sshd-fixture", "sleep 60"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        from agent.daemon.autostop import interactive_ssh_sessions

        while interactive_ssh_sessions() == 0 and time.time() < deadline:
            time.sleep(0.1)
        proc, marker = _start(tmp_path, "0.5s")
        time.sleep(2.5)
        assert not marker.exists() and proc.poll() is None
        assert "interactive SSH" in json.loads((tmp_path / "runs" / "autostop.json").read_text())["reason"]
        session.kill()
        session.wait()
        assert proc.wait(30) == 0 and marker.exists()
    finally:
        session.kill()
        _stop(proc)


def test_never_means_never(tmp_path):
    proc, marker = _start(tmp_path, "never")
    try:
        time.sleep(1.5)
        assert proc.poll() is None and not marker.exists()
        assert read_state(tmp_path / "runs")["remaining_s"] is None
    finally:
        _stop(proc)


def test_bad_setting_is_one_clean_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainctl", "autostop", "--runs-root", str(tmp_path),
                        "--after", "soonish"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("Error: --after: cannot read 'soonish' as a duration; use e.g. 90s, 15m, 4h, 1d "
                                "or 'never'")
