"""What runs on the box: the start wait on real processes started both ways, the wire line kept off
the terminal, and a failed stage as one line with its fix."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.protocol.procs import RESULT, wait_exec
from controller.box.stage import StageError, describe_failure, stage_all
from controller.launch.remote import HumanLines

SLEEPER = "import time\ntime.sleep(60)\n"


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def test_start_wait_sees_an_agent_started_as_a_script(tmp_path, procs):
    script = tmp_path / "ctl"
    script.write_text(f"#!{sys.executable}\n{SLEEPER}")
    script.chmod(0o755)
    argv = [str(script), "agent", "run", "--run-id", "w-20260101-000001"]
    procs.append(subprocess.Popen(argv))
    assert wait_exec(procs[-1].pid, argv, timeout=60)  # the kernel shows `<python> <script> args`
    cmdline = Path(f"/proc/{procs[-1].pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] != str(script).encode() and cmdline[1] == str(script).encode()


def test_start_wait_sees_an_agent_started_as_a_module(tmp_path, procs):
    (tmp_path / "fakeagent.py").write_text(SLEEPER)
    argv = [sys.executable, "-m", "fakeagent", "run", "--run-id", "w-20260101-000002"]
    procs.append(subprocess.Popen(argv, cwd=tmp_path))
    assert wait_exec(procs[-1].pid, argv, timeout=60)


def test_start_wait_does_not_take_another_command_for_the_agent(procs):
    procs.append(subprocess.Popen([sys.executable, "-c", SLEEPER]))
    assert not wait_exec(procs[-1].pid, [sys.executable, "-m", "trainctl", "agent"], timeout=0.3)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not wait_exec(gone.pid, [sys.executable, "-c", "pass"], timeout=60)  # reaped: no cmdline at all


def test_the_wire_line_never_reaches_the_terminal():
    out = io.StringIO()
    lines = HumanLines(out)
    for piece in ("stage model: 2 files", ", fetching 2\n  [1/2] a", " (1 KB)\n", RESULT, '[{"name": "model"}]\n',
                  "last words"):
        lines.write(piece)
    lines.finish()
    assert out.getvalue() == "stage model: 2 files, fetching 2\n  [1/2] a (1 KB)\nlast words\n"


def test_a_stage_into_a_folder_it_cannot_write_is_one_line_with_the_fix(tmp_path, moto_server, s3_bucket):
    moto_server.client("s3").put_object(Bucket=s3_bucket, Key="models/tiny/config.json", Body=b"{}")
    blocked = tmp_path / "models"
    blocked.write_text("a file where the folder should be")
    spec = {"targets": [{"name": "model", "src": f"s3://{s3_bucket}/models/tiny/", "dest": str(blocked / "tiny")}],
            "endpoint_url": moto_server.endpoint, "region": "us-east-1"}
    with pytest.raises(StageError) as err:
        stage_all(spec, say=lambda m: None)
    assert str(blocked / "tiny") in str(err.value) and "\n" not in str(err.value)
    spec["targets"][0].update(src=f"s3://{s3_bucket}/models/none/", dest=str(tmp_path / "ok" / "none"))
    with pytest.raises(StageError, match="nothing under .*models/none/: check stage.model"):
        stage_all(spec, say=lambda m: None)
    assert not (tmp_path / "ok").exists()  # nothing is made for a prefix with nothing in it


def test_permission_denied_names_the_folder_the_user_and_the_fix():
    exc = PermissionError(13, "Permission denied")
    exc.filename = "/mnt/training/models"
    line = describe_failure({"name": "model", "src": "s3://b/m/", "dest": "/mnt/training/models/m"}, exc)
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    assert line.startswith("stage model: cannot write /mnt/training/models (permission denied as " + user)
    assert f"sudo chown -R {user} /mnt/training/models" in line and "box.data_root" in line
