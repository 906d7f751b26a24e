"""`ctl launch --existing ... --resume` end to end over real parts: a moto instance reached through the
sshd fixture, the real agent, an IMDS stand-in giving the spot notice, and a small trainer script
that checkpoints on SIGTERM and resumes from the newest checkpoint in its output dir (the contract
train.sft.loop keeps; the real QLoRA trainer does the same in test_resume_after_spot.py). Also: the
autostop companion is started once for two launches, the instance is tagged ManagedBy=trainctl,
and `ctl status` shows the countdown."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from agent.daemon.autostop import read_state
from agent.daemon.companion import PID_FILE
from controller.launch.autostop import TAG_KEY, TAG_VALUE
from tests.e2e.harness import agent_pids, ctl, ctl_env, end_run_processes, new_instance, run_store, run_toml, wait_for
from tests.fixtures.imds import ImdsStandIn

RUN = "resume-20260101-120000"
TRAINER = r'''
import json, os, signal, sys, time
out, prog = os.environ["TRAINCTL_OUTPUT_DIR"], os.environ["TRAINCTL_PROGRESS_FILE"]
total, pause = int(sys.argv[1]), float(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def emit(rec):
    with open(prog, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
done = [int(d.split("-")[1]) for d in os.listdir(out)
        if d.startswith("checkpoint-") and os.path.isfile(os.path.join(out, d, "trainer_state.pt"))]
step = max(done, default=0)
if step:
    state = json.load(open(os.path.join(out, f"checkpoint-{step}", "trainer_state.pt")))
    assert state["step"] == step
    print(f"resuming from checkpoint-{step} at step {step}", flush=True)
emit({"phase": "training"})
while step < total:
    step += 1
    print(f"step {step}/{total}", flush=True)
    emit({"step": step, "total_steps": total, "loss": 1.0 / step})
    if stop:
        tmp = os.path.join(out, f"checkpoint-{step}.partial")
        os.makedirs(tmp)
        open(os.path.join(tmp, "adapter_model.safetensors"), "wb").write(os.urandom(4096))
        json.dump({"step": step}, open(os.path.join(tmp, "trainer_state.pt"), "w"))
        os.rename(tmp, os.path.join(out, f"checkpoint-{step}"))
        emit({"artifact": f"checkpoint-{step}", "path": f"checkpoint-{step}/", "final": False})
        print(f"received signal 15: checkpoint-{step} saved", flush=True)
        sys.exit(143)
    time.sleep(pause)
os.makedirs(os.path.join(out, "adapter"), exist_ok=True)
open(os.path.join(out, "adapter", "adapter_model.safetensors"), "wb").write(b"adapter")
emit({"artifact": "adapter", "path": "adapter/", "final": True})
'''


@pytest.fixture
def imds():
    s = ImdsStandIn()
    yield s
    s.close()


@pytest.fixture
def box(data_root):
    root = data_root
    yield root
    end_run_processes(RUN, root / "trainctl" / "runs" / RUN)
    try:
        pid = json.loads((root / "trainctl" / "runs" / PID_FILE).read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def progress_steps(path: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "step" in r] if path.exists() else []


def companions(runs_root: Path) -> list[int]:
    """Live `ctl autostop` processes for this runs root, read from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if b"autostop" in cmd and str(runs_root).encode() in cmd and ") Z " not in (d / "stat").read_text():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_spot_interrupted_run_resumes_via_launch_and_autostop_runs_once(
        moto_server, sshd, s3_bucket, imds, box, tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    cfg = run_toml(tmp_path / "run.toml", bucket=s3_bucket, endpoint=moto_server.endpoint, data_root=box,
                   command=[sys.executable, str(script), "60", "0.2"])
    env = ctl_env(moto_server, sshd, tmp_path / "home")
    fired = tmp_path / "autostop-fired"
    trainer_env = ('trainer.env={ TRAINCTL_PROGRESS_S = "0.1", TRAINCTL_LATEST_S = "0.2", TRAINCTL_STOP_GRACE_S = "2", '
                   f'TRAINCTL_IMDS_ENDPOINT = "{imds.endpoint}", TRAINCTL_IMDS_POLL_S = "0.1" }}')
    sets = ["--set", trainer_env, "--set", "autostop=2h", "--set", f"box.autostop_action=touch {fired}",
            "--set", "box.autostop_check_s=0.2"]
    rs = run_store(moto_server, s3_bucket)
    ec2 = moto_server.client("ec2")
    runs_root = box / "trainctl" / "runs"

    first = new_instance(moto_server, sshd)
    r = ctl(["launch", "--existing", first, "--config", str(cfg), "--run-id", RUN, *sets], env, check=0)
    assert f"tagged {first} {TAG_KEY}={TAG_VALUE}" in r.stdout
    assert "autostop:   2h 00m idle" in r.stdout and "companion started" in r.stdout, r.stdout
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [first]}])["Tags"]
    assert {(t["Key"], t["Value"]) for t in tags} >= {(TAG_KEY, TAG_VALUE)}
    wd = runs_root / RUN
    wait_for(lambda: len(progress_steps(wd / "progress.jsonl")) >= 3, 60, "three steps")
    imds.interrupt()
    err = wait_for(lambda: rs.read_error(RUN) or rs.read_complete(RUN), 90, "the interrupted marker")
    assert getattr(err, "cause", None) == "interrupted" and "spot interruption" in err.summary, err
    saved = err.last_step
    assert err.checkpoint.endswith(f"{RUN}/artifacts/checkpoint-{saved}/") and f"step {saved}" in err.summary
    wait_for(lambda: not agent_pids(RUN), 30, "the first agent to exit")

    # A completed run cannot be "resumed", an unknown one neither: one clear line each.
    r = ctl(["launch", "--existing", first, "--config", str(cfg), "--resume", "nope-20260101-000000"], env)
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr

    imds.notice = None  # the new box has no notice pending
    second = new_instance(moto_server, sshd)
    r = ctl(["launch", "--existing", second, "--config", str(cfg), "--resume", RUN, *sets], env, check=0)
    assert f"resuming {RUN} (interrupted, last step {saved}) from checkpoint-{saved}" in r.stdout, r.stdout
    assert "attempt 1's _error archived" in r.stdout and "companion already running" in r.stdout, r.stdout
    done = wait_for(lambda: rs.read_complete(RUN), 90, "the resumed run's _complete")
    assert rs.read_error(RUN) is None and any(a["name"] == "adapter" for a in done.artifacts)
    assert progress_steps(wd / "progress.jsonl") == list(range(saved + 1, 61))
    aside = list(wd.glob("attempt-*/progress.jsonl"))
    assert len(aside) == 1 and progress_steps(aside[0])[-1] == saved  # the first attempt's files, set aside
    log = rs.read_logs(RUN).data.decode()
    assert f"received signal 15: checkpoint-{saved} saved" in log and f"resuming from checkpoint-{saved}" in log
    assert rs.store.exists(rs.k(RUN, "attempts/1/_error"))
    assert rs.read_metadata(RUN).instance_id == second

    assert len(companions(runs_root)) == 1  # two launches, one companion
    state = wait_for(lambda: read_state(runs_root), 10, "the companion's countdown")
    assert state["autostop_s"] == 7200 and not fired.exists()
    r = ctl(["status", RUN, "--store", f"s3://{s3_bucket}/training-runs", "--endpoint-url", moto_server.endpoint,
             "--no-instance"], env, check=0)
    assert "autostop   the instance stops in 1h 59m" in r.stdout or "autostop   the instance stops in 2h" in r.stdout, \
        r.stdout


def test_local_launch_resume_in_the_same_workdir(imds, tmp_path):
    """`ctl launch --local --resume`: the local-folder store, the earlier attempt's files set aside in
    the same workdir, the checkpoint copied from the store, the run completed under its own id."""
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_local import LocalStore

    run = "local-20260101-120000"
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    home = tmp_path / "home"
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'name = "local"\n[agent]\nheartbeat_s = 0.5\nlog_flush_s = 0.2\nstop_poll_s = 0.2\n[trainer]\n'
                   f'command = {json.dumps([sys.executable, str(script), "60", "0.2"])}\n'
                   f'env = {{ TRAINCTL_PROGRESS_S = "0.1", TRAINCTL_IMDS_ENDPOINT = "{imds.endpoint}", '
                   'TRAINCTL_IMDS_POLL_S = "0.1" }\n')
    env = {**os.environ, "TRAINCTL_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("TRAINCTL_STORE", None)
    rs = RunStore(LocalStore(home / "runs"))
    wd = home / "box" / "trainctl" / "runs" / run
    try:
        r = ctl(["launch", "--local", "--config", str(cfg), "--run-id", run], env, check=0)
        assert "autostop:   off" in r.stdout, r.stdout
        wait_for(lambda: len(progress_steps(wd / "progress.jsonl")) >= 3, 60, "three steps")
        imds.interrupt()
        err = wait_for(lambda: rs.read_error(run) or rs.read_complete(run), 90, "the interrupted marker")
        assert getattr(err, "cause", None) == "interrupted", err
        wait_for(lambda: not agent_pids(run), 30, "the first agent to exit")
        imds.notice = None
        (wd / "output" / f"checkpoint-{err.last_step}").rename(wd / "output" / "moved-away")  # only the store has it
        r = ctl(["launch", "--local", "--config", str(cfg), "--resume", run], env, check=0)
        assert "were moved to" in r.stdout and f"checkpoint-{err.last_step} copied to {wd}/output" in r.stdout, r.stdout
        wait_for(lambda: rs.read_complete(run), 90, "the resumed run's _complete")
        assert progress_steps(wd / "progress.jsonl") == list(range(err.last_step + 1, 61))
        r = ctl(["launch", "--local", "--config", str(cfg), "--resume", run], env)
        assert r.returncode == 2 and f"run {run} completed: there is nothing to resume" in r.stderr, r.stderr
    finally:
        end_run_processes(run, wd)
