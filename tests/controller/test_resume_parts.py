"""The pieces of resume and autostop wiring that need no server: the set-aside script on a real
folder, the status countdown, the tag the watcher filters on, and the companion started once
(real processes, started and ended by pid here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from agent.daemon import companion as autostop_box
from agent.protocol import records as p
from controller.launch.autostop import TAG_KEY, TAG_VALUE, countdown
from controller.launch.resume import set_aside_script


def test_tag_is_the_one_the_watcher_filters_on():
    from ops.ec2 import TAG_KEY as OPS_KEY
    from ops.ec2 import TAG_VALUE as OPS_VALUE

    assert (TAG_KEY, TAG_VALUE) == (OPS_KEY, OPS_VALUE)


def test_set_aside_moves_an_earlier_attempts_agent_files_only(tmp_path):
    wd = tmp_path / "runs" / "r-20260101-000000"
    (wd / "output" / "checkpoint-3").mkdir(parents=True)
    subprocess.run(["bash", "-c", set_aside_script(str(wd), 111)], check=True)
    assert sorted(x.name for x in wd.iterdir()) == ["output"]  # fresh box: nothing to move
    for name in ("agent_state.json", "trainer.log", "progress.jsonl", "exit_status", "agent.env"):
        (wd / name).write_text(name)
    out = subprocess.run(["bash", "-c", set_aside_script(str(wd), 222)], check=True, capture_output=True, text=True)
    assert "set-aside" in out.stdout
    assert sorted(x.name for x in (wd / "attempt-222").iterdir()) == [
        "agent_state.json", "exit_status", "progress.jsonl", "trainer.log"]
    assert (wd / "agent.env").exists() and (wd / "output" / "checkpoint-3").is_dir()


def test_countdown_from_the_recorded_setting_and_the_marker():
    md = p.Metadata(run_id="r-20260101-000000", created=0.0, instance_id="i-1", config={"autostop": "15m"})
    assert countdown(md, None, 100.0) == "15m 00s after the run ends (no other run, no interactive SSH session)"
    assert countdown(md, 1000.0, 1300.0).startswith("the instance stops in 10m 00s (at 1970-01-01T00:31:40Z)")
    assert countdown(md, 1000.0, 2000.0, "stopped") == "stopped it 1m 40s ago (idle for 15m 00s)"
    assert countdown(md, 1000.0, 2000.0, "running").startswith("due 1m 40s ago")
    md.config = {"autostop": "never"}
    assert countdown(md, 1000.0, 2000.0).startswith("never")
    md.instance_id = None
    assert countdown(md, None, 0.0) == "off (not an EC2 instance)"
    md.config = {}
    assert countdown(md, None, 0.0) is None  # a run launched before autostop existed


@pytest.fixture
def companion_root(tmp_path):
    root = tmp_path / "runs"
    yield root
    try:
        pid = json.loads((root / autostop_box.PID_FILE).read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def _alive(pid: int) -> bool:
    return autostop_box._cmdline(pid) is not None


def test_companion_starts_once_and_a_new_setting_replaces_it(companion_root, tmp_path):
    spec = {"runs_root": str(companion_root), "after": "1h", "check_s": 0.2, "action": f"touch {tmp_path / 'x'}"}
    first = autostop_box.ensure(spec)
    again = autostop_box.ensure(spec)
    assert first["status"] == "started" and again == {"status": "already_running", "pid": first["pid"]}
    changed = autostop_box.ensure({**spec, "after": "2h"})
    assert changed["status"] == "restarted" and changed["pid"] != first["pid"]
    deadline = time.monotonic() + 10
    while _alive(first["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(first["pid"]) and _alive(changed["pid"])
    from agent.daemon.imds import on_ec2

    if not on_ec2():  # the default action halts the machine: never started off EC2
        assert autostop_box.ensure({**spec, "action": ""}) == {"status": "skipped", "pid": None}
        assert _alive(changed["pid"])
