"""The Terraform module, statically: fmt, validate, its variable rules, and a checkov scan."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.terraform import terraform

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra" / "terraform"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXJAbGFwdG9wIGZvciB0ZXN0cyBvbmx5IG5vdCBhIHJlYWwga2V5 t@t"


@pytest.fixture(scope="module")
def module_copy(tmp_path_factory, terraform_env) -> Path:
    """The module in a scratch folder, initialised against the offline provider mirror."""
    d = tmp_path_factory.mktemp("tfmod")
    for src in [*MODULE.glob("*.tf"), MODULE / "user_data.sh"]:
        shutil.copy2(src, d / src.name)
    r = terraform(["init", "-input=false", "-no-color"], d, terraform_env)
    assert r.returncode == 0, r.stderr
    return d


def test_fmt_check(terraform_env):
    r = terraform(["fmt", "-check", "-diff", "-recursive", str(MODULE)], ROOT, terraform_env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_validate(module_copy, terraform_env):
    r = terraform(["validate", "-no-color"], module_copy, terraform_env)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def variables_only(tmp_path_factory, terraform_env) -> Path:
    """variables.tf alone: its validation rules run in a plan that needs no provider and no AWS."""
    d = tmp_path_factory.mktemp("tfvars")
    shutil.copy2(MODULE / "variables.tf", d / "variables.tf")
    return d


def _plan(variables_only, terraform_env, tmp_path, **vars_):
    base = {"ssh_public_key": PUBKEY, "watcher_zip_path": "watcher.zip"}
    var_file = tmp_path / "t.tfvars.json"
    var_file.write_text(json.dumps({**base, **vars_}))
    return terraform(["plan", "-input=false", "-no-color", "-lock=false", f"-var-file={var_file}",
                      f"-state={tmp_path / 'none.tfstate'}"], variables_only, terraform_env, timeout=120)


def test_ssh_from_anywhere_is_refused_unless_explicitly_allowed(variables_only, terraform_env, tmp_path):
    r = _plan(variables_only, terraform_env, tmp_path, allowed_ssh_cidrs=["203.0.113.7/32", "0.0.0.0/0"])
    assert r.returncode != 0
    assert "opens SSH to the whole internet" in " ".join(r.stderr.split())

    ok = _plan(variables_only, terraform_env, tmp_path, allowed_ssh_cidrs=["0.0.0.0/0"],
               allow_ssh_from_anywhere=True)
    assert ok.returncode == 0, ok.stderr

    mine = _plan(variables_only, terraform_env, tmp_path, allowed_ssh_cidrs=["203.0.113.7/32"])
    assert mine.returncode == 0, mine.stderr


def test_allowed_ssh_cidrs_has_no_default(variables_only, terraform_env, tmp_path):
    r = _plan(variables_only, terraform_env, tmp_path)
    assert r.returncode != 0
    assert "No value for required variable" in r.stderr and "allowed_ssh_cidrs" in r.stderr


@pytest.mark.parametrize("bad, message", [
    ({"instance_type": "p4d.24xlarge"}, "instance_type must be a g5 size"),
    ({"allowed_ssh_cidrs": ["10.0.0.0/33"]}, "must list at least one valid CIDR"),
    ({"allowed_ssh_cidrs": []}, "must list at least one valid CIDR"),
    ({"data_volume_iops": 1000}, "data_volume_iops must be between 3000 and 16000"),
    ({"data_volume_throughput": 2000}, "data_volume_throughput must be between 125 and 1000"),
    ({"ssh_public_key": "~/.ssh/id_ed25519.pub"}, "not a file path"),
    ({"enable_watcher": True, "watcher_zip_path": None}, "run `ctl lambda-zip`"),
    ({"name": "Bad_Name"}, "lowercase letters, digits or dashes"),
])
def test_bad_variables_are_refused_with_a_fix(variables_only, terraform_env, tmp_path, bad, message):
    r = _plan(variables_only, terraform_env, tmp_path, **{"allowed_ssh_cidrs": ["203.0.113.7/32"], **bad})
    assert r.returncode != 0
    assert message in " ".join(r.stderr.split()), r.stderr


def _checkov() -> str:
    found = os.environ.get("TRAINCTL_CHECKOV") or str(ROOT / ".venv-checkov" / "bin" / "checkov")
    if not Path(found).exists():
        pytest.fail(f"checkov not found at {found}: `make install` builds .venv-checkov")
    return found


def test_checkov_finds_no_failed_check_and_every_skip_is_justified(tmp_path):
    # --skip-download: no platform lookups (the sandbox has no internet; the checks ship with checkov).
    r = subprocess.run([_checkov(), "-d", str(MODULE), "--framework", "terraform", "--skip-download",
                        "--compact", "-o", "json"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(r.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 50  # it really scanned the module

    skips = []
    for tf in MODULE.glob("*.tf"):
        skips += re.findall(r"#checkov:skip=(CKV2?_AWS_\d+):(.*)", tf.read_text())
    assert skips, "expected deliberate skips with justifications"
    for check_id, why in skips:
        assert len(why.split()) >= 6, f"{check_id} is skipped without a real justification: {why!r}"
    skipped_ids = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped_ids == {cid for cid, _ in skips}
