"""A real agent subprocess around fake trainers, against moto's S3 server: each ending gives the right marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.trainers.fake_trainer import expected_lines
from tests.trainers.harness import CTL, Agents, chunk_seqs, trainer_cmd, wait_for

RUN = "fake-20260101-120000"


@pytest.fixture
def s3(moto_server, s3_bucket):
    store = S3Store(s3_bucket, "training-runs", endpoint_url=moto_server.endpoint, region=REGION)
    return {"rs": RunStore(store), "url": f"s3://{s3_bucket}/training-runs", "env": moto_server.env(),
            "endpoint": moto_server.endpoint}


def run_agent(agents, s3, tmp_path, *trainer_args, timeout=60):
    proc = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd(*trainer_args), env=s3["env"],
                        endpoint=s3["endpoint"])
    rc = agents.wait(proc, timeout)
    return rc, Agents.output(proc)


def test_exit_0_with_adapter_completes_with_verified_artifacts(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "300", "--adapter", "ok", "--adapter-bytes", "9000000")
    rs = s3["rs"]
    assert rc == 0, out
    assert rs.read_error(RUN) is None
    done = rs.read_complete(RUN)
    assert done is not None, out
    (adapter,) = [a for a in done.artifacts if a["name"] == "adapter"]
    assert adapter["files"] == 2 and adapter["size"] > 9_000_000
    assert adapter["uri"].endswith(f"{RUN}/artifacts/adapter/")
    local = (tmp_path / "wd/output/adapter/adapter_model.safetensors").read_bytes()
    assert rs.store.get(rs.artifact_key(RUN, "adapter/adapter_model.safetensors")) == local
    assert rs.read_logs(RUN).data == b"".join(expected_lines(300))
    assert done.final_metrics["step"] == 296 and done.final_metrics["total_steps"] == 300
    pr = rs.read_progress(RUN)
    assert pr.step == 296 and pr.phase == "saving"
    hist = rs.read_history(RUN)
    assert [h["step"] for h in hist] == list(range(1, 300, 5))
    hb = rs.read_heartbeat(RUN)
    assert hb.trainer_alive is False and hb.seq >= 1 and hb.host["disk_free_bytes"] > 0
    md = rs.read_metadata(RUN)
    assert md.phase == "completed" and md.workdir == str(tmp_path / "wd")
    latest = rs.read_latest_log(RUN).splitlines()
    assert latest[-1] == expected_lines(300)[-1].decode().rstrip("\n")
    wd = tmp_path / "wd"
    status = json.loads((wd / "exit_status").read_text())
    assert status["exit_code"] == 0 and md.trainer_pid == status["pid"]
    assert not (wd / "agent.pid").exists()


def test_exit_1_gives_error_with_cause_and_tail(agents, s3, tmp_path):
    tail = "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n" \
           "ModuleNotFoundError: No module named 'peft'"
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "60", "--exit", "1", "--tail", tail)
    rs = s3["rs"]
    assert rc == 0, out
    err = rs.read_error(RUN)
    assert rs.read_complete(RUN) is None
    assert err.cause == "missing_module" and err.exit_code == 1 and err.signal is None
    assert "No module named 'peft'" in err.summary and err.remediation
    assert len(err.log_tail) == 50 and err.log_tail[-1].startswith("ModuleNotFoundError")
    assert err.last_step == 56 and err.duration_s > 0
    assert rs.read_metadata(RUN).phase == "failed"


def test_sigkilled_trainer_gives_error_with_signal(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "10", "--end", "sigkill")
    err = s3["rs"].read_error(RUN)
    assert rc == 0, out
    assert err.signal == "SIGKILL" and err.exit_code is None
    # Nothing in the kernel log names this pid, so it is not called an OOM kill.
    assert err.cause == "unknown" and "SIGKILL" in err.summary
    assert s3["rs"].read_complete(RUN) is None


def test_nan_loss_is_classified_from_progress(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "12", "--nan", "--exit", "1")
    err = s3["rs"].read_error(RUN)
    assert err.cause == "nan_loss" and err.last_loss == "nan", out


def test_hung_trainer_is_stopped_by_control_stop_with_escalation(agents, s3, tmp_path):
    ready = tmp_path / "ready"
    proc = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd(
        "--lines", "5", "--end", "hang-stubborn", "--ready-file", str(ready)), env=s3["env"], endpoint=s3["endpoint"])
    wait_for(ready.exists, what="trainer ready")
    rs = s3["rs"]
    wait_for(lambda: rs.read_heartbeat(RUN), what="first heartbeat")
    assert rs.read_heartbeat(RUN).trainer_alive is True
    assert rs.request_stop(RUN, requested_by="test")
    assert agents.wait(proc, 30) == 0, Agents.output(proc)
    err = rs.read_error(RUN)
    # SIGINT and SIGTERM were ignored, so it took SIGKILL.
    assert err.cause == "stopped_by_user" and err.signal == "SIGKILL"
    assert rs.read_metadata(RUN).phase == "stopped"
    assert rs.read_logs(RUN).data == b"".join(expected_lines(5))


def test_sigterm_to_agent_stops_trainer_and_marks_interrupted(agents, s3, tmp_path):
    ready = tmp_path / "ready"
    proc = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd("--lines", "3", "--end", "hang",
                        "--ready-file", str(ready)), env=s3["env"], endpoint=s3["endpoint"])
    wait_for(ready.exists, what="trainer ready")
    proc.send_signal(signal.SIGTERM)
    assert agents.wait(proc, 30) == 0, Agents.output(proc)
    err = s3["rs"].read_error(RUN)
    assert err.cause == "interrupted" and err.signal == "SIGINT"
    assert s3["rs"].read_logs(RUN).data.startswith(b"".join(expected_lines(3)))


def test_no_complete_when_declared_adapter_is_missing(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "5", "--adapter", "declare-missing")
    rs = s3["rs"]
    assert rc == 0, out
    assert rs.read_complete(RUN) is None
    err = rs.read_error(RUN)
    assert err.cause == "artifact_missing" and err.exit_code == 0 and "adapter" in err.summary


def test_no_complete_when_adapter_upload_fails(agents, s3, tmp_path):
    # A dangling symlink inside the adapter: the folder cannot be uploaded whole.
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "5", "--adapter", "dangling")
    rs = s3["rs"]
    assert rs.read_complete(RUN) is None, out
    assert rs.read_error(RUN).cause == "path_missing"


def test_trainer_command_not_found(agents, s3, tmp_path):
    proc = agents.start(RUN, s3["url"], tmp_path / "wd", ["definitely-not-a-trainer-xyz", "--x"],
                        env=s3["env"], endpoint=s3["endpoint"])
    assert agents.wait(proc) == 0, Agents.output(proc)
    err = s3["rs"].read_error(RUN)
    assert err.cause == "command_not_found" and err.exit_code == 127
    assert "definitely-not-a-trainer-xyz" in "\n".join(err.log_tail) and "[trainer] command" in err.remediation


def test_secrets_never_reach_the_store(agents, s3, tmp_path):
    secrets = ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexampletoken",
               "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
               "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"]
    tail = "\n".join([f"export AWS_ACCESS_KEY_ID={secrets[0]}", f"aws_secret_access_key = {secrets[1]}",
                      f"AWS_SESSION_TOKEN={secrets[2]}", f"posting to https://hooks.slack.com/services/{secrets[3]}",
                      f"huggingface-cli login --token {secrets[4]}", f"Authorization: Bearer {secrets[5]}",
                      f"raw key {secrets[1]} in a traceback"])
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "3", "--exit", "1", "--tail", tail)
    assert rc == 0, out
    objects = b"\n".join(s3["rs"].store.get(k) for k in s3["rs"].store.list(f"{RUN}/"))
    assert b"[REDACTED]" in objects
    for secret in secrets:
        assert secret.encode() not in objects, secret
    local = (tmp_path / "wd/trainer.log").read_bytes()
    assert secrets[0].encode() in local  # the spool on the box keeps the raw bytes; only shipping redacts
    err = s3["rs"].read_error(RUN)
    assert any("[REDACTED]" in ln for ln in err.log_tail)


def test_secret_values_in_the_agents_env_are_masked_even_bare(agents, s3, tmp_path):
    """A W&B key is 40 hex digits, the shape of a git sha that no rule may mask: the agent masks it
    because it is the value of a secret-named variable in its own (and so the trainer's) env."""
    wandb_key, token, sha = "0123456789abcdef0123456789abcdef01234567", "s3cr3t-v4lue-of-a-token", "f" * 40
    tail = "\n".join([f"wandb: using key {wandb_key}", f"connecting with {token}", f"at commit {sha}"])
    env = {**s3["env"], "WANDB_API_KEY": wandb_key, "MY_SERVICE_TOKEN": token, "TOKENIZERS_PARALLELISM": "false"}
    proc = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd("--lines", "3", "--exit", "1", "--tail", tail),
                        env=env, endpoint=s3["endpoint"])
    assert agents.wait(proc) == 0, Agents.output(proc)
    objects = b"\n".join(s3["rs"].store.get(k) for k in s3["rs"].store.list(f"{RUN}/"))
    assert wandb_key.encode() not in objects and token.encode() not in objects
    assert b"wandb: using key [REDACTED]" in objects and f"at commit {sha}".encode() in objects
    assert wandb_key not in Agents.output(proc)
    err = s3["rs"].read_error(RUN)
    assert "connecting with [REDACTED]" in err.log_tail and wandb_key not in "\n".join(err.log_tail)


def test_second_agent_for_same_workdir_is_refused(agents, s3, tmp_path):
    ready = tmp_path / "ready"
    first = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd("--lines", "2", "--end", "hang",
                         "--ready-file", str(ready)), env=s3["env"], endpoint=s3["endpoint"])
    wait_for(ready.exists, what="trainer ready")
    second = agents.start(RUN, s3["url"], tmp_path / "wd", trainer_cmd("--lines", "2"), env=s3["env"],
                          endpoint=s3["endpoint"])
    assert agents.wait(second, 30) == 2
    out = Agents.output(second)
    assert "already running" in out and "Traceback" not in out
    assert first.poll() is None


def test_bad_run_id_is_one_clean_line(tmp_path):
    r = subprocess.run([*CTL, "agent", "run", "--run-id", "bad/../id",
                        "--store", str(tmp_path / "s"), "--workdir", str(tmp_path / "wd"), "--", "true"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: invalid run id") and "Traceback" not in r.stderr
    assert not (tmp_path / "wd").exists() and not (tmp_path / "s").exists()


def test_agent_cli_imports_nothing_heavy():
    code = ("import sys, agent.cli, agent.daemon.loop, agent.daemon.finalize, trainctl.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0, r.stdout + r.stderr


def test_chunks_are_numbered_without_gaps(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "400", "--interval", "0.005")
    assert rc == 0, out
    seqs = chunk_seqs(s3["rs"], RUN)
    assert len(seqs) >= 2 and seqs == list(range(1, len(seqs) + 1))


def test_local_folder_store_and_gpu_stats_in_heartbeat(agents, tmp_path):
    # A stand-in nvidia-smi on PATH prints what the real one prints for these query flags.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA A10G, 97, 21034, 23028, 61'\n")
    smi.chmod(0o755)
    store = tmp_path / "store"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = agents.start(RUN, str(store), tmp_path / "wd", trainer_cmd("--lines", "30", "--adapter", "ok"), env=env)
    assert agents.wait(proc) == 0, Agents.output(proc)
    from agent.protocol.store_local import LocalStore

    rs = RunStore(LocalStore(store))
    assert rs.read_complete(RUN) is not None
    assert rs.read_heartbeat(RUN).gpus == [{"index": 0, "name": "NVIDIA A10G", "util_percent": 97,
                                            "mem_used_mib": 21034, "mem_total_mib": 23028, "temp_c": 61}]
    assert rs.read_logs(RUN).data == b"".join(expected_lines(30))


def test_vanished_checkpoint_does_not_block_completion(agents, s3, tmp_path):
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "10", "--rotated-checkpoint", "--adapter", "ok")
    done = s3["rs"].read_complete(RUN)
    assert rc == 0 and done is not None, out
    assert [a["name"] for a in done.artifacts] == ["adapter"]
    assert "checkpoint-1" in out and "does not exist" in out


@pytest.mark.parametrize("args,expect", [
    (["--store", "ftp://nowhere/x"], "unsupported store URL"),
    (["--store", "s3://"], "has no bucket"),
    (["--workdir", "/proc/definitely/not/writable"], "cannot use workdir"),
])
def test_bad_settings_are_one_clean_line(tmp_path, args, expect):
    base = {"--store": str(tmp_path / "s"), "--workdir": str(tmp_path / "wd")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    flat = [x for kv in base.items() for x in kv]
    r = subprocess.run([*CTL, "agent", "run", "--run-id", RUN, *flat, "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("Error: ") and expect in r.stderr and "Traceback" not in r.stderr


def test_cli_keeps_the_interface_the_controller_builds_against():
    r = subprocess.run([*CTL, "agent", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for opt in ("--run-id", "--store", "--endpoint-url", "--workdir", "--heartbeat-s", "--log-flush-s",
                "--stop-poll-s", "--stop-grace-s", "--finalize-timeout-s"):
        assert opt in r.stdout, opt


def test_processes_left_behind_by_the_trainer_are_killed(agents, s3, tmp_path):
    import psutil

    pid_file = tmp_path / "child.pid"
    rc, out = run_agent(agents, s3, tmp_path, "--lines", "3", "--leave-child", str(pid_file))
    assert rc == 0 and s3["rs"].read_complete(RUN) is not None, out
    child = int(pid_file.read_text())
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             timeout=10, what="left-behind child killed")
    assert "left behind" in out


def test_two_agents_started_at_once_start_one_trainer(agents, s3, tmp_path):
    cmd = trainer_cmd("--lines", "20", "--interval", "0.05")
    procs = [agents.start(RUN, s3["url"], tmp_path / "wd", cmd, env=s3["env"], endpoint=s3["endpoint"])
             for _ in range(2)]
    codes = sorted(agents.wait(p) for p in procs)
    outs = [Agents.output(p) for p in procs]
    assert codes == [0, 2], outs
    assert sum(o.count("started trainer") for o in outs) == 1
    assert s3["rs"].read_logs(RUN).data == b"".join(expected_lines(20))
