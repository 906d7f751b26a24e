"""Each real-server fixture proven live."""

from __future__ import annotations

import shutil
import subprocess

import botocore.exceptions
import pytest
from slack_sdk.webhook import WebhookClient

from tests.fixtures.terraform import terraform


def test_moto_s3_round_trip_and_outage(private_moto):
    s3 = private_moto.client("s3")
    s3.create_bucket(Bucket="roundtrip")
    s3.put_object(Bucket="roundtrip", Key="k", Body=b"v")
    private_moto.stop()
    import boto3
    from botocore.config import Config

    quick = boto3.client("s3", endpoint_url=private_moto.endpoint, region_name="us-east-1",
                         config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        quick.get_object(Bucket="roundtrip", Key="k")
    private_moto.start()  # same port, state kept
    assert s3.get_object(Bucket="roundtrip", Key="k")["Body"].read() == b"v"


def test_sshd_runs_echo(sshd):
    r = sshd.ssh("echo hello-from-sshd")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello-from-sshd"


def test_sshd_maps_an_ip(sshd):
    sshd.map_ip("54.197.142.172")
    r = sshd.ssh("echo mapped", host="54.197.142.172")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "mapped"


def test_the_box_is_built_like_a_deep_learning_ami(sshd, data_root, tmp_path):
    """Non-root login with passwordless sudo; a root-owned data root that is a real mount; root login too."""
    r = sshd.ssh(f"id -u; sudo -n id -u; python3 -c 'import os; print(os.path.ismount(\"{data_root}\"))'; "
                 f"touch {data_root}/x 2>/dev/null && echo writable || echo read-only")
    uid, sudo_uid, mounted, access = r.stdout.split()
    assert r.returncode == 0 and uid != "0" and sudo_uid == "0"
    assert mounted == "True" and access == "read-only" and data_root.stat().st_uid == 0
    cfg = tmp_path / "ssh_config"
    cfg.write_text(sshd.root_block("as-root"))
    root = subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", "as-root", "id -u"], capture_output=True,
                          text=True, timeout=30)
    assert root.stdout.strip() == "0"


def test_slack_standin_records_and_rate_limits(slack):
    client = WebhookClient(slack.webhook_url)
    assert client.send(text="hello").status_code == 200
    assert slack.posts[-1]["body"]["text"] == "hello"
    slack.fail_next(429, 1, retry_after=1)
    resp = client.send(text="again")
    assert resp.status_code == 429 and resp.headers.get("Retry-After", resp.headers.get("retry-after")) in ("1", ["1"])
    assert len(slack.posts) == 1 and len(slack.attempts) == 2
    slack.fail_next(500, 1)
    assert client.send(text="boom").status_code == 500


def test_terraform_init_offline(terraform_env, tmp_path):
    (tmp_path / "main.tf").write_text('terraform {\n  required_providers {\n    aws = { source = "hashicorp/aws" }\n  }\n}\n')
    r = terraform(["init", "-no-color", "-input=false"], tmp_path, terraform_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hashicorp/aws" in r.stdout


def test_tools_present():
    for tool in ("ssh", "ssh-keygen", "terraform"):
        assert shutil.which(tool), f"{tool} missing: make test installs it"
    assert subprocess.run(["terraform", "version"], capture_output=True).returncode == 0
