"""Every refusal is one line with its fix, before anything starts (issue 13).

Each family drives the real `ctl` in a subprocess against moto's server and checks: a non-zero
exit, no traceback, at most a few lines naming the fix, and nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.moto_server import REGION

REPO = Path(__file__).resolve().parents[1]
RUN = "probe-20250101-000000"


def no_aws_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment with no AWS credentials anywhere (no keys, no profile, no config, no IMDS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and not k.startswith("TRAINCTL_")}
    env.update(HOME=str(tmp_path / "home"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_MAX_ATTEMPTS="1", PYTHONPATH=str(REPO), **extra)
    return env


def ctl(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainctl", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def assert_refused(r: subprocess.CompletedProcess, *needles: str, max_lines: int = 3) -> str:
    """Non-zero, no traceback, a few lines, the last one the error naming every needle; returns it."""
    out = r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, out
    assert "Traceback" not in out, out
    assert lines and len(lines) <= max_lines, out
    last = lines[-1]
    assert last.startswith("Error: "), out
    for n in needles:
        assert n in last, out
    return last


STORE_COMMANDS = [["runs"], ["status", RUN], ["tail", RUN], ["stop", RUN], ["watch", "--once", "--no-ec2"]]


@pytest.mark.parametrize("cmd", STORE_COMMANDS, ids=lambda c: c[0])
def test_no_credentials_names_aws_configure_profile_and_sso(cmd, moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    before = moto_server.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0)
    r = ctl([*cmd, "--store", f"s3://{bucket}/runs", "--endpoint-url", moto_server.endpoint], no_aws_env(tmp_path))
    assert_refused(r, "no AWS credentials", "aws configure", "AWS_PROFILE", "aws sso login")
    assert moto_server.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == before


@pytest.mark.parametrize("cmd", [["runs"], ["status", RUN], ["watch", "--once", "--no-ec2"]], ids=lambda c: c[0])
def test_missing_bucket_names_the_store_setting(cmd, moto_server, tmp_path):
    env = no_aws_env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    r = ctl([*cmd, "--store", "s3://no-such-bucket-trainctl-13/runs", "--endpoint-url", moto_server.endpoint], env)
    assert_refused(r, "NoSuchBucket", "the bucket does not exist", "--store", "TRAINCTL_STORE", "store.url")


def test_a_profile_that_does_not_exist_is_one_line(tmp_path):
    r = ctl(["runs", "--store", "s3://some-bucket/runs"], no_aws_env(tmp_path, AWS_PROFILE="no-such-profile-13"))
    assert_refused(r, "no-such-profile-13", "AWS_PROFILE")


def test_agent_refuses_a_store_that_cannot_work_before_the_trainer_starts(moto_server, tmp_path):
    # A typo in the bucket: permanent, so the trainer never starts and the agent exits non-zero at once
    # (not after the finalize timeout); its log says what the probe found.
    marker = tmp_path / "trainer-ran"
    env = no_aws_env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    r = ctl(["agent", "run", "--run-id", RUN, "--store", "s3://no-such-bucket-trainctl-13/runs",
             "--endpoint-url", moto_server.endpoint, "--store-region", REGION, "--workdir", str(tmp_path / "wd"),
             "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"], env)
    assert_refused(r, "NoSuchBucket", "--store", max_lines=4)
    assert "store probe:" in r.stderr and "refused before its trainer starts" in r.stderr
    assert not marker.exists()


def test_agent_rides_out_a_store_that_is_only_down(tmp_path):
    # Connection refused is transient: the probe logs it and the trainer starts (spooled as today).
    from tests.fixtures.net import free_port

    marker = tmp_path / "trainer-ran"
    env = no_aws_env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "trainctl", "agent", "run", "--run-id", RUN,
                             "--store", "s3://down/runs", "--endpoint-url", f"http://127.0.0.1:{free_port()}",
                             "--workdir", str(tmp_path / "wd"), "--",
                             sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # wait on the event (the probe's log line), then on the trainer
            lines.append(line)
            if "store probe:" in line:
                break
        assert "looks transient" in "".join(lines), "".join(lines)
        from tests.trainers.harness import wait_for

        wait_for(marker.exists, 60, "the trainer to start despite the store being down")
    finally:
        proc.kill()
        proc.wait()
