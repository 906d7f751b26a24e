"""End to end: `ctl launch --existing` against a moto EC2 instance whose public IP maps, through
ssh_config, to the real sshd fixture (the "box" is this machine), with the real agent running a
fake trainer, and `ctl tail` following it to its marker.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.e2e.harness import agent_pids, wait_for
from tests.fixtures.box import readable_tree, shared_folder

REPO = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]

FAKE_TRAINER = r'''
import json, os, sys, time
steps, code, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
prog = os.environ["TRAINCTL_PROGRESS_FILE"]
def emit(rec):
    with open(prog, "a") as fh:
        fh.write(json.dumps(rec) + "\n")
emit({"phase": "training"})
for i in range(1, steps + 1):
    print(f"fake step {i}/{steps} loss {1.0 / i:.3f}", flush=True)
    emit({"step": i, "total_steps": steps, "loss": 1.0 / i, "tokens_per_s": 100.0})
    time.sleep(pause)
if code:
    print("RuntimeError: fake trainer failed on purpose", file=sys.stderr, flush=True)
sys.exit(code)
'''

WHEEL = [""]  # set by the `wheel` fixture, which every config-writing test pulls in via trainer_script


@pytest.fixture(scope="module")
def ctl_home(tmp_path_factory):
    """One TRAINCTL_HOME per worker: the wheel cache is shared, pins are per instance id anyway."""
    return tmp_path_factory.mktemp("trainctl-home")


@pytest.fixture(scope="module")
def wheel(ctl_home):
    """One wheel for the module: others edit the shared tree meanwhile, and "nothing changed" must hold."""
    from controller.launch.wheel import build

    old = os.environ.get("TRAINCTL_HOME")
    os.environ["TRAINCTL_HOME"] = str(ctl_home)
    try:
        return build(say=lambda m: None).path
    finally:
        os.environ.pop("TRAINCTL_HOME") if old is None else os.environ.update(TRAINCTL_HOME=old)


@pytest.fixture(scope="module")
def trainer_script(tmp_path_factory, wheel):
    WHEEL[0] = wheel
    p = tmp_path_factory.mktemp("trainer") / "fake_trainer.py"
    p.write_text(FAKE_TRAINER)
    return p


@pytest.fixture
def box_root(data_root):
    """The box's data root: root-owned and mounted, as /mnt/training on the AMI."""
    return data_root


@pytest.fixture(scope="module")
def shared_box(shared_data_root):
    """A data root kept across tests, as a real box is: its venv is built once."""
    return shared_data_root


@pytest.fixture
def env(moto_server, sshd, ctl_home):
    e = {**os.environ, **moto_server.env(), "TRAINCTL_HOME": str(ctl_home),
         "TRAINCTL_SSH_CONFIG": str(sshd.ssh_config), "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint,
         "PYTHONPATH": str(REPO)}
    e.pop("TRAINCTL_STORE", None)
    return e


def new_instance(moto_server, sshd, instance_type="g5.2xlarge") -> str:
    ec2 = moto_server.client("ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=ami, InstanceType=instance_type, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    sshd.map_ip(ip)
    return iid


def write_config(path: Path, bucket: str, endpoint: str, box_root: Path, trainer: Path, *, steps=4, code=0,
                 pause=0.1, commands=(), model="") -> Path:
    cmd = json.dumps([sys.executable, str(trainer), str(steps), str(code), str(pause)])
    path.write_text(f"""
name = "e2e"
[store]
url = "s3://{bucket}/training-runs"
endpoint_url = "{endpoint}"
forward_aws_credentials = true
[ssh]
wait_timeout_s = 20
[instance]
poll_s = 0.1
wait_timeout_s = 30
[box]
data_root = "{box_root}"
require_mount = false
require_gpu = false
min_free_gb = 0.1
[setup]
python = "{sys.executable}"
install_deps = false
wheel = "{WHEEL[0]}"
commands = {json.dumps(list(commands))}
[stage]
model = "{model}"
[agent]
heartbeat_s = 0.5
log_flush_s = 0.2
stop_poll_s = 0.2
[trainer]
command = {cmd}
env = {{ TRAINCTL_PROGRESS_S = "0.1", TRAINCTL_LATEST_S = "0.2", TRAINCTL_STOP_GRACE_S = "2" }}
""")
    return path


def ctl(args, env, timeout=180, check=None) -> subprocess.CompletedProcess:
    r = subprocess.run([*CTL, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert r.returncode == check, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def store_for(moto_server, bucket):
    return RunStore(S3Store(bucket, "training-runs", endpoint_url=moto_server.endpoint, region="us-east-1"))


def install_log_lines(box_root: Path) -> list[str]:
    p = box_root / "trainctl" / "install.log"
    return p.read_text().splitlines() if p.exists() else []


def test_launch_stopped_instance_tail_complete_then_cached_relaunch_fails(
        moto_server, sshd, s3_bucket, env, tmp_path, shared_box, trainer_script, reap):
    iid = new_instance(moto_server, sshd)
    moto_server.client("ec2").stop_instances(InstanceIds=[iid])
    # Starting gives the instance a new public IP (as on AWS): route every IP to the box.
    wild = tmp_path / "ssh_config"
    wild.write_text(sshd.ssh_config.read_text() + sshd.host_block("*.*.*.*"))
    env = {**env, "TRAINCTL_SSH_CONFIG": str(wild)}
    s3 = moto_server.client("s3")
    for key, body in (("models/tiny/config.json", b"{}"), ("models/tiny/shard-1.bin", b"w" * 70000)):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body)
    model = f"s3://{s3_bucket}/models/tiny/"
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, shared_box, trainer_script, model=model)
    url = f"s3://{s3_bucket}/training-runs"

    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--no-start"], env, check=1)
    assert "stopped" in r.stderr and "--no-start" in r.stderr and "Traceback" not in r.stderr

    rid = "e2e-20260101-000001"
    reap.append(rid)
    before = install_log_lines(shared_box)
    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    assert f"starting stopped instance {iid}" in r.stdout
    assert f"pinned host key for {iid}" in r.stdout
    assert "create venv" in r.stdout and "install trainctl" in r.stdout
    assert f"ctl tail {rid}" in r.stdout
    installs = install_log_lines(shared_box)
    assert len(installs) - len(before) in (0, 2)  # a venv and a wheel install, unless a test before made them
    assert "stage model: 2 files, 0 up to date, fetching 2" in r.stdout
    assert "RESULT" not in r.stdout  # the box's wire line stays off the terminal
    assert (shared_box / "models" / "tiny" / "shard-1.bin").stat().st_size == 70000
    user = pwd.getpwnam(sshd.user).pw_uid
    assert shared_box.stat().st_uid == 0  # the data root stays root's; what the launch made is the user's
    assert {(shared_box / d).stat().st_uid for d in ("trainctl", "trainctl/runs", "models", "models/tiny")} == {user}

    t = ctl(["tail", rid, "--store", url, "--poll-s", "0.2", "--from-start"], env, check=0)
    assert "fake step 4/4" in t.stdout and "COMPLETED" in t.stdout

    rs = store_for(moto_server, s3_bucket)
    md = rs.read_metadata(rid)
    assert md.instance_id == iid and md.instance_type == "g5.2xlarge"
    assert md.config["box"]["data_root"] == str(shared_box)  # the resolved config is what was recorded
    assert md.config["instance"]["id"] == iid
    raw_md = rs.store.get(rs.k(rid, "metadata.json")).decode()
    assert "AWS_SECRET_ACCESS_KEY" not in raw_md and "aws_secret" not in raw_md.lower()

    # Second launch, nothing changed but the trainer's exit code: every setup step is cached.
    write_config(cfg, s3_bucket, moto_server.endpoint, shared_box, trainer_script, code=1, model=model)
    rid2 = "e2e-20260101-000002"
    reap.append(rid2)
    r2 = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid2], env, check=0)
    assert "upload trainctl wheel: cached" in r2.stdout
    assert "create venv" in r2.stdout and "install trainctl" in r2.stdout
    assert r2.stdout.count(": cached") == 3, r2.stdout
    assert "pinned host key" not in r2.stdout  # the pin matched
    assert install_log_lines(shared_box) == installs  # nothing was reinstalled
    assert "stage model: 2 files, 2 up to date, fetching 0" in r2.stdout

    t2 = ctl(["tail", rid2, "--store", url, "--poll-s", "0.2", "--lines", "3"], env, check=1)
    assert "FAILED" in t2.stdout and "fix:" in t2.stdout


def test_a_failed_stage_is_one_line_and_leaves_nothing_of_the_run(moto_server, sshd, s3_bucket, env, tmp_path,
                                                                   box_root, trainer_script):
    iid = new_instance(moto_server, sshd)
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script,
                       model=f"s3://{s3_bucket}/models/not-uploaded/")
    rid = "stagefail-20260101-000001"
    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=1)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stdout + r.stderr and "RESULT" not in r.stdout
    assert f"nothing under s3://{s3_bucket}/models/not-uploaded/: check stage.model" in r.stderr
    assert not (box_root / "trainctl" / "runs" / rid).exists()  # agent.env (0600) and all
    assert not store_for(moto_server, s3_bucket).run_exists(rid)


def test_launch_as_root_still_works(moto_server, sshd, s3_bucket, env, tmp_path, box_root, trainer_script, reap):
    """A box whose login user is root (no sudo on any step): the path every test took before."""
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(sshd.root_block("root-box"))
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    rid = "root-20260101-000001"
    reap.append(rid)
    r = ctl(["launch", "--host", "root-box", "--ssh-config", str(ssh_config), "--config", str(cfg), "--run-id", rid],
            env, check=0)
    assert "connecting to root@" in r.stdout and f"run {rid} started" in r.stdout
    t = ctl(["tail", rid, "--store", f"s3://{s3_bucket}/training-runs", "--poll-s", "0.2", "--from-start"], env,
            check=0)
    assert "fake step 4/4" in t.stdout and "COMPLETED" in t.stdout
    assert (box_root / "trainctl" / "runs" / rid).stat().st_uid == 0


def test_second_launch_refused_while_active_then_stop(moto_server, sshd, s3_bucket, env, tmp_path, shared_box,
                                                       trainer_script, reap):
    iid = new_instance(moto_server, sshd)
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, shared_box, trainer_script,
                       steps=3000, pause=0.1)  # outlives slow launches; stopped below
    url = f"s3://{s3_bucket}/training-runs"
    rid = "busy-20260101-000001"
    reap.append(rid)
    ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)

    same = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    assert f"run {rid} is already running" in same.stdout
    other = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", "busy-20260101-000002"], env, check=1)
    assert f"busy with run {rid}" in other.stderr and f"ctl stop {rid}" in other.stderr
    assert len(agent_pids(rid, shared_box / "trainctl" / "runs" / rid)) == 1
    assert not store_for(moto_server, s3_bucket).run_exists("busy-20260101-000002")

    st = ctl(["status", rid, "--store", url, "--json"], env, check=0)
    d = json.loads(st.stdout)
    assert d["instance_state"] == "running" and d["outcome"] == "running"

    ctl(["stop", rid, "--store", url, "--wait", "--timeout-s", "60", "--poll-s", "0.2"], env, check=0)
    # This box's agent for this run (its workdir): another checkout may run the same run id meanwhile.
    wd = shared_box / "trainctl" / "runs" / rid
    wait_for(lambda: not agent_pids(rid, wd), 30, "the stopped run's agent to exit")


def test_killed_ssh_during_setup_then_relaunch_starts_one_trainer(moto_server, sshd, s3_bucket, env, tmp_path,
                                                                   box_root, trainer_script, reap):
    iid = new_instance(moto_server, sshd)
    shared = shared_folder(tmp_path / "gate")  # the box user's setup command writes here too
    gate, entered = shared / "release", shared / "in-setup"
    hold = f"touch {entered}; while [ ! -e {gate} ]; do sleep 0.1; done"
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script,
                       steps=4000, pause=0.05, commands=[hold])  # outlives a slow relaunch; stopped below
    rid = "killed-20260101-000001"
    reap.append(rid)
    first = subprocess.Popen([*CTL, "launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: entered.exists() or first.poll() is not None, 60, "setup to reach the extra command")
        assert first.poll() is None, first.stdout.read()
        first.kill()  # the SSH connection dies with the client, mid-setup
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    gate.touch()  # the orphaned setup command on the box may now finish
    assert not store_for(moto_server, s3_bucket).run_exists(rid)

    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    assert "started" in r.stdout
    again = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env, check=0)
    assert f"run {rid} is already running" in again.stdout
    assert len(agent_pids(rid, box_root / "trainctl" / "runs" / rid)) == 1
    url = f"s3://{s3_bucket}/training-runs"
    ctl(["stop", rid, "--store", url, "--wait", "--timeout-s", "60", "--poll-s", "0.2"], env, check=0)
    log = (box_root / "trainctl" / "runs" / rid / "trainer.log").read_text()
    assert log.count("fake step 1/4000") == 1  # one trainer ran, once


def test_changed_host_key_is_refused(moto_server, sshd, s3_bucket, env, tmp_path, box_root, trainer_script, ctl_home):
    iid = new_instance(moto_server, sshd)
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    from controller.launch.hostkeys import PinStore

    PinStore(ctl_home / "known_hosts").pin(iid, paramiko.Ed25519Key(filename=str(other)))
    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", "hk-20260101-000001"], env, check=1)
    assert f"host key for {iid} changed" in r.stderr
    assert f"ctl hosts forget {iid}" in r.stderr and "Traceback" not in r.stderr
    assert not (box_root / "trainctl").exists()  # nothing ran on the box
    ctl(["hosts", "forget", iid], env, check=0)
    assert iid not in ctl(["hosts", "list"], env, check=0).stdout


def test_a_refused_login_tags_nothing_pins_nothing_and_writes_nothing(moto_server, sshd, s3_bucket, env, tmp_path,
                                                                       box_root, trainer_script):
    # Refusal order (issue 13): the instance is tagged and its host key pinned only once the login worked.
    iid = new_instance(moto_server, sshd)
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    home = tmp_path / "home"
    r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--user", "nobody-trainctl-13"],
            {**env, "TRAINCTL_HOME": str(home)}, check=1)
    assert "SSH login to" in r.stderr and "was refused" in r.stderr and "--user / ssh.user" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    tags = moto_server.client("ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert not [t for t in tags.get("Tags", []) if t["Key"] == "ManagedBy"]
    assert "pinned host key" not in r.stdout
    assert iid not in ctl(["hosts", "list"], {**env, "TRAINCTL_HOME": str(home)}, check=0).stdout
    assert moto_server.client("s3").list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert not (box_root / "trainctl").exists()


def test_a_trainer_command_missing_on_the_box_is_a_preflight_problem(sshd, s3_bucket, moto_server, env, tmp_path,
                                                                      box_root, trainer_script):
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    r = ctl(["launch", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--ssh-key", str(sshd.user_key),
             "--config", str(cfg), "--", "definitely-not-installed-13", "--epochs", "1"],
            {**env, "TRAINCTL_HOME": str(tmp_path / "home")}, check=1)
    assert "preflight found 1 problem(s)" in r.stderr and "Traceback" not in r.stderr
    assert "the trainer command 'definitely-not-installed-13' is not on the box" in r.stderr
    assert "fix: fix [trainer] command" in r.stderr
    assert moto_server.client("s3").list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert not (box_root / "trainctl").exists()


def test_our_trainers_model_folder_on_the_box_is_checked_before_setup(sshd, s3_bucket, moto_server, env, tmp_path,
                                                                        box_root, trainer_script):
    """model.path names a folder already on the box (nothing stages it): a folder with a config and
    a tokenizer but no weights is one preflight problem, before anything is written anywhere."""
    model = tmp_path / "box-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    readable_tree(model)
    train = tmp_path / "train.toml"
    train.write_text(f'[model]\npath = "{model}"\n[data]\npath = "{tmp_path / "data"}"\n')
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if not ln.startswith("command = ")))
    r = ctl(["launch", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--ssh-key", str(sshd.user_key),
             "--config", str(cfg), "--trainer-config", str(train)], {**env, "TRAINCTL_HOME": str(tmp_path / "home")},
            check=1)
    assert "preflight found 1 problem(s)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert f"model.path {model} on the box has no model weights" in r.stderr
    assert "fix: copy the whole saved model folder there, or stage it from S3" in r.stderr
    assert moto_server.client("s3").list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert not (box_root / "trainctl").exists()


@pytest.mark.parametrize("state", ["terminated", "missing", "t3"])
def test_unusable_instances_are_clear_errors(moto_server, sshd, s3_bucket, env, tmp_path, box_root, trainer_script,
                                             state):
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    if state == "missing":
        iid, want = "i-0123456789abcdef0", "not found in region us-east-1"
    elif state == "t3":
        iid, want = new_instance(moto_server, sshd, "t3.micro"), "--allow-no-gpu"
    else:
        iid, want = new_instance(moto_server, sshd), "cannot be started again"
        moto_server.client("ec2").terminate_instances(InstanceIds=[iid])
    r = ctl(["launch", "--existing", iid, "--config", str(cfg)], env, check=1)
    assert want in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1  # one clean line


def test_host_launch_preflight_lists_every_problem(sshd, s3_bucket, moto_server, env, tmp_path, trainer_script):
    box_root = tmp_path / "no-volume-here"  # a plain folder, not a mount
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    env = {**env, "TRAINCTL_HOME": str(tmp_path / "home")}  # no pin yet: earlier tests reach this sshd too
    r = ctl(["launch", "--host", f"{sshd.user}@127.0.0.1:{sshd.port}", "--ssh-key", str(sshd.user_key),
             "--config", str(cfg), "--set", "box.require_gpu=true", "--set", "box.require_mount=true",
             "--set", "box.min_python='3.99'", "--set", "box.volume_device='/dev/trainctl-none'"], env, check=1)
    assert "preflight found 4 problem(s)" in r.stderr
    assert "no GPU visible" in r.stderr and "no data volume is mounted" in r.stderr
    assert "python3 on the box is" in r.stderr and "setup.python is Python" in r.stderr
    assert r.stderr.count("fix: ") == 4 and "Traceback" not in r.stderr
    assert f"pinned host key for 127.0.0.1:{sshd.port}" in r.stdout
    assert not (box_root / "trainctl").exists()


def test_local_launch_with_local_store(tmp_path, trainer_script, reap):
    home = tmp_path / "home"
    env = {**os.environ, "TRAINCTL_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TRAINCTL_STORE", None)
    rid = "local-20260101-000001"
    reap.append(rid)
    r = ctl(["launch", "--local", "--run-id", rid, "--set", "agent.heartbeat_s=0.5", "--set", "agent.log_flush_s=0.2",
             "--follow", "--", sys.executable, str(trainer_script), "3", "0", "0.05"], env, check=0)
    assert f"file://{home}/runs" in r.stdout
    assert "fake step 3/3" in r.stdout and "COMPLETED" in r.stdout  # --follow tailed it to _complete
    assert (home / "box" / "trainctl" / "runs" / rid / "trainer.log").exists()


def test_agent_that_cannot_start_is_reported_and_recorded(tmp_path, trainer_script):
    home = tmp_path / "home"
    env = {**os.environ, "TRAINCTL_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TRAINCTL_STORE", None)
    rid = "nostart-20260101-000001"
    r = ctl(["launch", "--local", "--run-id", rid, "--set", "trainer.env.TRAINCTL_AGENT_TICK_S='-1'",
             "--", sys.executable, str(trainer_script), "1", "0", "0"], env, check=1)
    assert "exited at once (code 2)" in r.stderr and "--tick-s" in r.stderr and "Traceback" not in r.stderr
    from agent.protocol.store_local import LocalStore

    err = RunStore(LocalStore(home / "runs")).read_error(rid)
    assert err.cause == "the agent did not start" and err.exit_code == 2


def test_host_behind_a_bastion_from_ssh_config(sshd, s3_bucket, moto_server, env, tmp_path, box_root, trainer_script):
    """ProxyJump in the user's ssh_config is honoured: two logins, the second tunnelled through the first."""
    cfg_file = tmp_path / "ssh_config"
    cfg_file.write_text(sshd.host_block("bastion") + sshd.host_block("private-box").replace(
        "  LogLevel ERROR\n", "  LogLevel ERROR\n  ProxyJump bastion\n"))
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    before = sshd.log.read_text(errors="replace").count("Accepted publickey")
    r = ctl(["launch", "--host", "private-box", "--config", str(cfg), "--ssh-config", str(cfg_file),
             "--set", "box.require_gpu=true"], env, check=1)
    assert "preflight found 1 problem(s)" in r.stderr and "no GPU visible" in r.stderr
    after = sshd.log.read_text(errors="replace").count("Accepted publickey")
    assert after - before == 2


def test_a_run_id_from_another_box_is_refused(sshd, s3_bucket, moto_server, env, tmp_path, box_root, trainer_script):
    from agent.protocol import records as p

    rid = "elsewhere-20260101-000001"
    store_for(moto_server, s3_bucket).write_metadata(p.Metadata(run_id=rid, created=time.time(),
                                                                host="ubuntu@10.9.8.7:22"))
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    r = ctl(["launch", "--host", "sshd-fixture", "--config", str(cfg), "--run-id", rid], env, check=2)
    assert "was launched on ubuntu@10.9.8.7:22" in r.stderr
    assert not (box_root / "trainctl").exists()


def test_dry_run_prints_the_plan_and_changes_nothing(sshd, s3_bucket, moto_server, env, tmp_path, box_root,
                                                     trainer_script):
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, box_root, trainer_script)
    rid = "dry-20260101-000001"
    r = ctl(["launch", "--host", "sshd-fixture", "--config", str(cfg), "--run-id", rid, "--dry-run"], env, check=0)
    assert f"dry run for {rid}" in r.stdout
    assert "create venv" in r.stdout and "-m venv --system-site-packages --without-pip" in r.stdout
    assert f"agent run --run-id {rid}" in r.stdout
    assert not (box_root / "trainctl").exists()
    assert not store_for(moto_server, s3_bucket).run_exists(rid)


def test_two_racing_launches_start_one_run(moto_server, sshd, s3_bucket, env, tmp_path, shared_box, trainer_script,
                                           reap):
    iid = new_instance(moto_server, sshd)
    cfg = write_config(tmp_path / "run.toml", s3_bucket, moto_server.endpoint, shared_box, trainer_script,
                       steps=3000, pause=0.1)  # outlives slow launches; stopped below
    rids = ["race-20260101-000001", "race-20260101-000002"]
    reap.extend(rids)
    procs = [subprocess.Popen([*CTL, "launch", "--existing", iid, "--config", str(cfg), "--run-id", rid], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rid in rids]
    results = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    loser = rids[[p.returncode for p in procs].index(1)]
    winner = rids[[p.returncode for p in procs].index(0)]
    assert "busy" in results[rids.index(loser)][1]
    runs = shared_box / "trainctl" / "runs"
    assert len(agent_pids(winner, runs / winner)) == 1 and agent_pids(loser, runs / loser) == []
    rs = store_for(moto_server, s3_bucket)
    assert rs.run_exists(winner) and not rs.run_exists(loser)  # the loser left nothing behind
    ctl(["stop", winner, "--store", f"s3://{s3_bucket}/training-runs", "--wait", "--timeout-s", "60",
         "--poll-s", "0.2"], env, check=0)


def test_dead_agent_tails_as_stale_and_frees_the_box(tmp_path, trainer_script, reap):
    home = tmp_path / "home"
    env = {**os.environ, "TRAINCTL_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("TRAINCTL_STORE", None)
    rid, nxt = "dead-20260101-000001", "dead-20260101-000002"
    reap.extend([rid, nxt])
    common = ["--set", "agent.heartbeat_s=0.3", "--set", "agent.log_flush_s=0.1"]
    ctl(["launch", "--local", "--run-id", rid, *common, "--", sys.executable, str(trainer_script), "600", "0", "0.1"],
        env, check=0)
    wd = home / "box" / "trainctl" / "runs" / rid
    wait_for((wd / "wrapper.pid").exists, 30, "the trainer to start")
    # The box dies once the agent has beaten: a run killed before its first heartbeat is still "starting",
    # judged by the setup timeout, not stale (a loaded machine can take that long to get there).
    wait_for((home / "runs" / rid / "heartbeat.json").exists, 60, "the agent's first heartbeat")
    agent = int((wd / "agent.pid").read_text())
    for pgid in (agent, int((wd / "wrapper.pid").read_text())):  # the box "dies": agent and trainer, by pid
        os.killpg(pgid, signal.SIGKILL)
    t = ctl(["tail", rid, "--poll-s", "0.2", "--stale-after-s", "2", "--lines", "0"], env, check=3)
    assert "STALE" in t.stdout and "no heartbeat for" in t.stdout
    r = ctl(["launch", "--local", "--run-id", nxt, *common, "--follow", "--", sys.executable, str(trainer_script),
             "2", "0", "0"], env, check=0)
    assert "COMPLETED" in r.stdout  # a dead agent does not hold the box
