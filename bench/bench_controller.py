"""Controller benchmark: a relaunch with nothing changed, against the real sshd and moto's EC2/S3.

Targets: a relaunch with nothing changed spends <= 15 s before the trainer starts (SkyPilot's
re-launch took 36 s), and, on a box like the Deep Learning AMI (non-root login with sudo), well
under 2 s beyond the SSH round trip itself. `ctl launch` returns right after the agent started the
trainer, so its wall time is the figure. Baselines measured in the same run: the first launch
on a fresh box (builds the venv), and a plain `ssh <box> true` round trip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]
TRAINER = "import json, os; open(os.environ['TRAINCTL_PROGRESS_FILE'], 'a').write(json.dumps({'step': 1}) + '\\n')"


def _timed(cmd, env) -> float:
    t = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[3:5]} failed: {r.stderr.strip()[-400:]}")
    if os.environ.get("BENCH_VERBOSE"):
        print(r.stdout, file=sys.stderr)
    return time.monotonic() - t


def _wait_done(env, run_id, url) -> None:
    subprocess.run([*CTL, "tail", run_id, "--store", url, "--poll-s", "0.2", "--no-follow"], env=env,
                   capture_output=True, timeout=60)
    subprocess.run([*CTL, "tail", run_id, "--store", url, "--poll-s", "0.2", "--lines", "0"], env=env,
                   capture_output=True, timeout=120)


def run(quick: bool = True) -> list[dict]:
    import logging

    sys.path.insert(0, str(REPO))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    from tests.fixtures.box import DataRoot, reach
    from tests.fixtures.moto_server import FAKE_CREDS, MotoServer
    from tests.fixtures.sshd import Sshd

    tmp = reach(Path(tempfile.mkdtemp(prefix="bench-controller-")), listable=True)
    # The box as on a Deep Learning AMI: a non-root login with sudo, a root-owned mounted data root.
    moto, sshd, data_root = MotoServer(), Sshd(tmp / "sshd"), DataRoot(tmp / "box")
    moto.start()
    sshd.start()
    data_root.mount()
    try:
        ec2 = moto.client("ec2")
        ami = ec2.describe_images()["Images"][0]["ImageId"]
        iid = ec2.run_instances(ImageId=ami, InstanceType="g5.2xlarge", MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"]
        ip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PublicIpAddress"]
        sshd.map_ip(ip)
        bucket = moto.new_bucket()
        url = f"s3://{bucket}/training-runs"
        # Others edit the tree while this runs; pin one wheel so "nothing changed" holds.
        old_home = os.environ.get("TRAINCTL_HOME")
        os.environ["TRAINCTL_HOME"] = str(tmp / "home")
        try:
            from controller.launch.wheel import build

            wheel = build(say=lambda m: None).path
        finally:
            os.environ.pop("TRAINCTL_HOME") if old_home is None else os.environ.update(TRAINCTL_HOME=old_home)
        cfg = tmp / "run.toml"
        cfg.write_text(f"""
name = "bench"
[store]
url = "{url}"
endpoint_url = "{moto.endpoint}"
forward_aws_credentials = true
[box]
data_root = "{tmp / 'box'}"
require_mount = false
require_gpu = false
min_free_gb = 0.1
[setup]
python = "{sys.executable}"
install_deps = false
wheel = "{wheel}"
[agent]
heartbeat_s = 0.5
log_flush_s = 0.2
[trainer]
command = {json.dumps([sys.executable, "-c", TRAINER])}
""")
        env = {**os.environ, **FAKE_CREDS, **moto.env(), "TRAINCTL_HOME": str(tmp / "home"),
               "TRAINCTL_SSH_CONFIG": str(sshd.ssh_config), "TRAINCTL_EC2_ENDPOINT": moto.endpoint,
               "PYTHONPATH": str(REPO)}
        t = time.monotonic()
        r = sshd.ssh("true", host=ip)
        ssh_s = time.monotonic() - t
        if r.returncode != 0:
            raise RuntimeError(f"ssh baseline failed: {r.stderr}")
        launch = [*CTL, "launch", "--existing", iid, "--config", str(cfg), "--run-id"]
        first = _timed([*launch, "bench-20260101-000000"], env)
        _wait_done(env, "bench-20260101-000000", url)
        times = []
        for i in range(2 if quick else 5):
            rid = f"bench-20260101-00000{i + 1}"
            times.append(_timed([*launch, rid], env))
            _wait_done(env, rid, url)
        relaunch = min(times)
    finally:
        sshd.stop()
        data_root.unmount()
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return [
        {"name": "relaunch_nothing_changed_s", "value": round(relaunch, 3), "baseline": round(first, 3),
         "ratio": round(relaunch / first, 3), "target": "<= 15 s (baseline: first launch, fresh venv)", "unit": "s"},
        {"name": "relaunch_vs_ssh_true", "value": round(relaunch, 3), "baseline": round(ssh_s, 3),
         "ratio": round(relaunch / ssh_s, 2), "target": "<= 15 s (baseline: one `ssh box true`)", "unit": "s"},
        {"name": "relaunch_beyond_ssh_true_s", "value": round(relaunch - ssh_s, 3), "baseline": round(ssh_s, 3),
         "ratio": round((relaunch - ssh_s) / 2.0, 2),
         "target": "<= 2 s beyond one `ssh box true` (non-root box; ratio = value / 2 s)", "unit": "s"},
    ]


if __name__ == "__main__":
    for row in run(quick="--full" not in sys.argv):
        print(row)
