"""Shared pieces of the end-to-end tests: `ctl` as a subprocess, a moto g5 instance routed to the sshd
fixture, run.toml files for `ctl launch --existing`, an in-process watcher over the real sweep, and
the checks every fault test makes (lossless log, the Slack messages that went out).

Processes are found by reading /proc and ended by pid, never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.trainers.harness import kill_wrapper_group
from tests.trainers.harness import wait_for as _wait_for

REPO = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]
# Two test workers share two cores: trainers run single-threaded and offline.
TRAINER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRAINCTL_PROGRESS_S": "0.1", "TRAINCTL_LATEST_S": "0.2",
               "TRAINCTL_STOP_GRACE_S": "2", "TRAINCTL_RETRY_MAX_S": "1", "TRAINCTL_PARTIAL_LINE_S": "1"}


def ctl(args: list[str], env: dict, timeout: float = 240, check: int | None = None) -> subprocess.CompletedProcess:
    """Run `ctl args...`; with `check`, assert the exit code and show both streams when it differs."""
    r = subprocess.run([*CTL, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check is not None:
        assert r.returncode == check, f"ctl {args[0]}: rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def ctl_env(moto_server, sshd, home: Path, ssh_config: Path | None = None) -> dict:
    """Environment of a user's shell pointed at moto (EC2 + S3) and the sshd fixture."""
    e = {**os.environ, **moto_server.env(), "TRAINCTL_HOME": str(home), "PYTHONPATH": str(REPO),
         "TRAINCTL_SSH_CONFIG": str(ssh_config or sshd.ssh_config), "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint}
    for k in ("TRAINCTL_STORE", "SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN", "SLACK_CHANNEL"):
        e.pop(k, None)
    return e


def wildcard_ssh_config(sshd, path: Path) -> Path:
    """An ssh_config that routes every IPv4 address to the sshd fixture (a restarted instance gets a new IP)."""
    path.write_text(sshd.ssh_config.read_text() + sshd.host_block("*.*.*.*"))
    return path


def new_instance(moto_server, sshd, instance_type: str = "g5.2xlarge") -> str:
    """A running moto instance whose public IP reaches the sshd fixture."""
    ec2 = moto_server.client("ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=ami, InstanceType=instance_type, MinCount=1,
                            MaxCount=1)["Instances"][0]["InstanceId"]
    ip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    sshd.map_ip(ip)
    return iid


def run_toml(path: Path, *, bucket: str, endpoint: str, data_root: Path, command: list[str] | None = None,
             trainer_config: Path | None = None, train_sets: list[str] = (), heartbeat_s: float = 0.5,
             wheel: Path | None = None, setup_commands: list[str] = ()) -> Path:
    """A run.toml for `ctl launch --existing`: this machine's python as is (setup.mode = current), or, with
    `wheel`, a venv on the box seeded from it with the prebuilt wheel and extra setup commands."""
    trainer = [f"command = {json.dumps(command)}"] if command else []
    if trainer_config:
        trainer.append(f'config = "{trainer_config}"')
    if train_sets:
        trainer.append(f"set = {json.dumps(list(train_sets))}")
    env = ", ".join(f'{k} = "{v}"' for k, v in TRAINER_ENV.items())
    path.write_text(f"""name = "e2e"
[store]
url = "s3://{bucket}/training-runs"
endpoint_url = "{endpoint}"
forward_aws_credentials = true
[ssh]
wait_timeout_s = 30
[instance]
poll_s = 0.1
wait_timeout_s = 30
[box]
data_root = "{data_root}"
require_mount = false
require_gpu = false
min_free_gb = 0.1
[setup]
mode = "{'venv' if wheel else 'current'}"
python = "{sys.executable}"
install_deps = false
wheel = "{wheel or ''}"
commands = {json.dumps(list(setup_commands))}
[agent]
heartbeat_s = {heartbeat_s}
log_flush_s = 0.2
stop_poll_s = 0.2
[trainer]
{chr(10).join(trainer)}
env = {{ {env} }}
""")
    return path


def run_store(moto_server, bucket: str) -> RunStore:
    return RunStore(S3Store(bucket, "training-runs", endpoint_url=moto_server.endpoint, region=REGION))


def agent_pids(run_id: str, workdir: Path | None = None) -> list[int]:
    """Live (non-zombie) processes running the agent for `run_id` (in `workdir`: another checkout's tests may
    run the same run id meanwhile), read from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if (b"agent" in cmd and b"run" in cmd and run_id.encode() in cmd and ") Z " not in stat
                and (workdir is None or str(workdir).encode() in cmd)):
            out.append(int(d.name))
    return out


def end_run_processes(run_id: str, workdir: Path) -> None:
    """SIGKILL a run's agents and its trainer's process group, by pid (test teardown, or a power cut)."""
    for pid in agent_pids(run_id, workdir):
        try:
            # ctl launch starts the agent in a session of its own; anything else is ended alone.
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    kill_wrapper_group(Path(workdir))
    deadline = time.monotonic() + 20
    while agent_pids(run_id, workdir) and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_for(pred, timeout: float = 60, what: str = "condition", interval: float = 0.1):
    """Poll `pred` until truthy (a bound on waiting, not a timing assertion); e2e runs get a longer bound."""
    return _wait_for(pred, timeout=timeout, what=what, interval=interval)


def assert_lossless(rs: RunStore, run_id: str, printed: bytes) -> int:
    """The stored chunks, concatenated, are the trainer's output byte for byte; chunk numbers have no gap."""
    from agent.protocol.records import chunk_seq

    data = rs.read_logs(run_id).data
    if data != printed:
        at = next((i for i, (a, b) in enumerate(zip(data, printed, strict=False)) if a != b),
                  min(len(data), len(printed)))
        raise AssertionError(f"stored log differs from the trainer's output ({len(data)} vs {len(printed)} bytes), "
                             f"first at byte {at}: stored {data[at:at + 60]!r}, printed {printed[at:at + 60]!r}")
    seqs = [chunk_seq(k) for k in rs.list_log_chunks(run_id)]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    return data.count(b"\n")


def headlines(slack) -> list[str]:
    """The first line of every delivered Slack post, in order."""
    return [p["body"].get("text", "").splitlines()[0] for p in slack.posts]


def ledger_kinds(rs: RunStore, run_id: str) -> list[str]:
    """What the watcher's ledger says it sent for the run: `alert:hung`, `resolved:hung`, `final:failed`..."""
    from ops.alerts import ledger as L

    led = L.load(rs, run_id).ledger
    out = []
    for e in led.sent:
        out.append(f"{e['kind']}:{e.get('was_state') or e.get('state')}")
    return out
