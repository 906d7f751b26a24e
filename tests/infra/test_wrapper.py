"""The terraform wrapper and the infra commands: plan parsing, clean errors, the watcher zip."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infra.lambda_zip import HANDLER, build_zip, sha256_b64
from infra.tf import diagnostics, plan_changes, summarize
from tests.fixtures.moto_server import FAKE_CREDS

PLAN_EVENTS = "\n".join(json.dumps(e) for e in [
    {"type": "version", "terraform": "1.11.4"},
    {"type": "planned_change", "change": {"resource": {"addr": "aws_instance.gpu"}, "action": "create"}},
    {"type": "planned_change", "change": {"resource": {"addr": "aws_security_group.ssh"}, "action": "update"}},
    {"type": "planned_change", "change": {"resource": {"addr": "aws_key_pair.this"}, "action": "replace"}},
    {"type": "planned_change", "change": {"resource": {"addr": "data.aws_ami.dlami[0]"}, "action": "read"}},
    {"type": "planned_change", "change": {"resource": {"addr": "aws_lambda_function.w[0]"}, "action": "delete"}},
    {"type": "change_summary", "changes": {"add": 2, "change": 1, "remove": 2}},
])


def test_plan_changes_and_summary_count_like_terraform():
    changes = plan_changes("not json\n" + PLAN_EVENTS)
    assert changes == [("create", "aws_instance.gpu"), ("update", "aws_security_group.ssh"),
                       ("replace", "aws_key_pair.this"), ("delete", "aws_lambda_function.w[0]")]
    text = summarize(changes)
    assert text.splitlines()[0] == "Plan: 2 to add, 1 to change, 2 to destroy."
    assert "  -/+ aws_key_pair.this" in text and "    + aws_instance.gpu" in text


def test_diagnostics_render_errors_only():
    events = "\n".join(json.dumps(e) for e in [
        {"type": "diagnostic", "diagnostic": {"severity": "warning", "summary": "Deprecated"}},
        {"type": "diagnostic", "diagnostic": {"severity": "error", "summary": "Invalid value for variable",
                                              "detail": "use your own address/32",
                                              "range": {"filename": "variables.tf"}}},
    ])
    assert diagnostics(events) == "Error: Invalid value for variable (variables.tf)\nuse your own address/32"
    assert diagnostics("plain text") == ""


def ctl(args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainctl", *args], env=env or os.environ.copy(), cwd=cwd,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_missing_terraform_is_one_clean_error(tmp_path):
    var_file = tmp_path / "v.tfvars"
    var_file.write_text('allowed_ssh_cidrs = ["203.0.113.7/32"]\n')
    r = ctl(["provision", "--var-file", str(var_file), "--auto-approve", "--workdir", str(tmp_path / "w"),
             "--terraform", str(tmp_path / "no-such-terraform")])
    assert r.returncode == 1
    assert r.stderr.startswith("Error: terraform not found") and "Traceback" not in r.stderr
    assert "install Terraform" in r.stderr


def test_terraform_failure_shows_its_own_error_in_one_block(tmp_path, terraform_env, moto_server):
    var_file = tmp_path / "open.tfvars"
    var_file.write_text('allowed_ssh_cidrs = ["0.0.0.0/0"]\nssh_public_key = "ssh-ed25519 AAAAC3Nza t@t"\n'
                        'ami_id = "ami-1e749f67"\n')
    workdir = tmp_path / "stack"
    r = ctl(["provision", "--var-file", str(var_file), "--auto-approve", "--workdir", str(workdir),
             "--endpoint-url", moto_server.endpoint], env={**terraform_env, **FAKE_CREDS})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: terraform apply failed (exit 1):\nError: Invalid value for variable")
    assert "opens SSH to the whole internet" in r.stderr
    assert not (workdir / "outputs.json").exists()
    assert not list(workdir.glob("*.tfstate"))  # nothing was applied


def test_provision_without_a_terminal_needs_auto_approve(tmp_path):
    r = ctl(["provision", "--workdir", str(tmp_path / "w")])
    assert r.returncode == 2
    assert "pass --auto-approve" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()


def test_missing_var_file_is_a_config_error(tmp_path):
    r = ctl(["provision", "--auto-approve", "--workdir", str(tmp_path / "w"), "--var-file", str(tmp_path / "nope")])
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_destroy_of_nothing_says_so(tmp_path):
    r = ctl(["destroy", "--yes", "--workdir", str(tmp_path / "w")])
    assert r.returncode == 1
    assert "nothing provisioned in" in r.stderr and "Traceback" not in r.stderr


def test_lambda_zip_is_reproducible_and_complete(tmp_path):
    a, b = build_zip(tmp_path / "a.zip"), build_zip(tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes() and sha256_b64(a) == sha256_b64(b)
    names = zipfile.ZipFile(a).namelist()
    assert "ops/lambda_handler.py" in names and "agent/protocol/store_s3.py" in names
    assert any(n.startswith("slack_sdk/models/blocks/") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[0] not in ("agent", "ops", "slack_sdk")]

    r = ctl(["lambda-zip", "-o", str(tmp_path / "c.zip")])
    assert r.returncode == 0 and HANDLER in r.stdout and sha256_b64(a) in r.stdout


# What the Lambda Python runtime provides besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")


def test_lambda_zip_runs_the_handler_with_only_what_the_runtime_provides(tmp_path, moto_server, s3_bucket):
    code = tmp_path / "code"
    zipfile.ZipFile(build_zip(tmp_path / "w.zip")).extractall(code)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        src = Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations else Path(spec.origin)
        (runtime / src.name).symlink_to(src)
    # -S -I: no site-packages, no user paths; only the zip and the runtime's own packages.
    prog = (f"import sys; sys.path[:0] = [{str(code)!r}, {str(runtime)!r}]\n"
            "import json, ops.lambda_handler as h\n"
            "r = h.handler({}, None)\n"
            "print('REPORT', json.dumps(r, default=str))\n")
    env = {**FAKE_CREDS, "PATH": os.environ["PATH"], "TRAINCTL_STORE": f"s3://{s3_bucket}/training-runs",
           "TRAINCTL_S3_ENDPOINT": moto_server.endpoint, "TRAINCTL_EC2": "0"}
    r = subprocess.run([sys.executable, "-S", "-I", "-c", prog], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.split("REPORT ", 1)[1])
    assert isinstance(report, dict)


@pytest.mark.parametrize("endpoint, tls", [(None, None), ("https://emulator.internal:4566", None),
                                           ("http://127.0.0.1:5000", False)])
def test_generated_variables_keep_the_module_normal_unless_an_endpoint_is_given(tmp_path, endpoint, tls):
    from infra.stack import GENERATED_VARS, Stack

    Stack(tmp_path / "w", endpoint_url=endpoint).prepare()
    generated = json.loads((tmp_path / "w" / GENERATED_VARS).read_text())
    assert Path(generated["watcher_zip_path"]).is_file()
    assert sorted(p.name for p in (tmp_path / "w").glob("*.tf")) == sorted(
        p.name for p in (Path(__file__).resolve().parents[2] / "infra" / "terraform").glob("*.tf"))
    if endpoint is None:
        assert "endpoints" not in generated
    else:
        assert set(generated["endpoints"].values()) == {endpoint} and "lambda" in generated["endpoints"]
    assert generated.get("store_require_tls") is tls


def test_stack_name_cannot_escape_the_state_folder(tmp_path):
    r = ctl(["destroy", "--yes", "--stack", "../../etc"], env={**os.environ, "TRAINCTL_HOME": str(tmp_path)})
    assert r.returncode == 2
    assert "stack name '../../etc' must be letters" in r.stderr and "Traceback" not in r.stderr


def test_provision_shows_the_plan_and_no_changes_nothing(tmp_path, terraform_env, moto_server):
    """On a terminal, provision plans, prints the summary, asks; "n" leaves nothing applied."""
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    var_file = tmp_path / "v.tfvars.json"
    var_file.write_text(json.dumps({"allowed_ssh_cidrs": ["203.0.113.7/32"], "ami_id": "ami-1e749f67",
                                    "ssh_public_key": (tmp_path / "k.pub").read_text().strip(), "name": "tno"}))
    workdir = tmp_path / "stack"
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "trainctl", "provision", "--var-file", str(var_file),
                                 "--workdir", str(workdir), "--endpoint-url", moto_server.endpoint],
                                env={**terraform_env, **FAKE_CREDS}, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.write(master, b"n\n")
        out, err = proc.communicate(timeout=240)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1, out + err
    assert "to add, 0 to change, 0 to destroy." in out and "    + aws_instance.gpu" in out
    assert "Apply this plan? [y/N]" in out
    assert err.startswith("Error: provision cancelled: nothing was changed")
    assert not list(workdir.glob("*.tfstate")) and not (workdir / "outputs.json").exists()
    ec2 = moto_server.client("ec2")
    assert not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": ["tno-*"]}])["KeyPairs"]


def test_destroy_refuses_to_guess_what_to_keep_after_a_failed_apply(tmp_path, terraform_env, moto_server):
    """State holds a kept-by-default resource but no output says so (as after a half-failed apply).

    The SSM parameter stands in for the data volume: the same rule, and instant on moto."""
    workdir = tmp_path / "stack"
    workdir.mkdir()
    endpoint = moto_server.endpoint
    name = f"/guard-{os.getpid()}-{tmp_path.name}/slack-webhook"
    (workdir / "main.tf").write_text(f"""
provider "aws" {{
  region                      = "us-east-1"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  endpoints {{
    ssm = "{endpoint}"
    sts = "{endpoint}"
  }}
}}
resource "aws_ssm_parameter" "slack_webhook" {{
  count = 1
  name  = "{name}"
  type  = "SecureString"
  value = "unset"
}}
""")
    env = {**terraform_env, **FAKE_CREDS}
    for args in (["init", "-input=false"], ["apply", "-auto-approve", "-input=false"]):
        r = subprocess.run(["terraform", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
    (workdir / "provision.json").write_text(json.dumps({"var_files": [], "endpoint_url": endpoint}))
    ssm = moto_server.client("ssm")

    r = ctl(["destroy", "--yes", "--workdir", str(workdir)], env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "do not list slack_webhook_parameter as kept" in r.stderr and "--delete-webhook-parameter" in r.stderr
    assert ssm.get_parameter(Name=name)["Parameter"]["Name"] == name  # untouched

    r = ctl(["destroy", "--yes", "--delete-webhook-parameter", "--workdir", str(workdir)], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "aws_ssm_parameter.slack_webhook[0]" in r.stdout and "Destroyed. Kept: nothing." in r.stdout
    assert not ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
