"""The README's user guide, step by step, on a box built like a g5 with the Deep Learning AMI: the
login user is not root and escalates with sudo, the data root is a root-owned mount. The user copies
controller/run.example.toml and train/examples/train.toml, edits the values the README names,
stages the model and data from S3 (moto), launches on a moto g5 instance mapped to the box, follows
the run to its end with `ctl tail`, and reads `ctl status` and `ctl runs`.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, TRAINER_ENV, ctl, ctl_env, end_run_processes, new_instance, run_store
from tests.fixtures.tiny_model import prepare_tiny_dataset

pytestmark = pytest.mark.slow


def edit_toml(text: str, section: str, key: str, value) -> str:
    """Set `key` in `[section]` ("" = the top) to `value` (JSON is TOML for these values), as a user edits."""
    literal = json.dumps(value) if not isinstance(value, dict) else \
        "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
    header = f"[{section}]\n" if section else ""
    start = text.index(header) + len(header) if section else 0
    nxt = text.find("\n[", start)
    end = len(text) if nxt < 0 else nxt + 1
    body, line = text[start:end], f"{key} = {literal}"
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.M)
    body = pattern.sub(lambda _: line, body, count=1) if pattern.search(body) else line + "\n" + body
    return text[:start] + body + text[end:]


def upload_folder(s3, bucket: str, folder: Path, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
    return f"s3://{bucket}/{prefix}/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    from controller.launch.wheel import build

    return build(say=lambda m: None).path


def test_readme_user_guide_on_a_dlami_like_box(moto_server, sshd, s3_bucket, tiny_model, tmp_path, data_root,
                                               wheel):
    data = prepare_tiny_dataset(tmp_path / "data", [f"the agent ships every line {i}" for i in range(60)], tiny_model)
    s3 = moto_server.client("s3")
    model_uri = upload_folder(s3, s3_bucket, tiny_model, "models/tiny-mistral")
    data_uri = upload_folder(s3, s3_bucket, data, "datasets/tiny-chat")
    iid = new_instance(moto_server, sshd)

    # 2. Launch on the box: cp controller/run.example.toml run.toml, then edit it.
    run = (REPO / "controller" / "run.example.toml").read_text()
    for section, key, value in [
            ("instance", "id", iid), ("ssh", "user", sshd.user), ("ssh", "key", str(sshd.user_key)),
            ("ssh", "wait_timeout_s", 30), ("instance", "wait_timeout_s", 30), ("instance", "poll_s", 0.1),
            ("box", "data_root", str(data_root)), ("box", "min_free_gb", 0.5),
            ("setup", "python", sys.executable), ("setup", "install_deps", False), ("setup", "wheel", str(wheel)),
            ("store", "url", f"s3://{s3_bucket}/training-runs"), ("store", "endpoint_url", moto_server.endpoint),
            ("store", "forward_aws_credentials", True), ("stage", "model", model_uri), ("stage", "data", data_uri),
            ("agent", "heartbeat_s", 0.5), ("agent", "log_flush_s", 0.2), ("agent", "stop_poll_s", 0.2),
            ("trainer", "config", str(tmp_path / "train.toml")), ("trainer", "env", TRAINER_ENV)]:
        run = edit_toml(run, section, key, value)
    (tmp_path / "run.toml").write_text(run)
    train = (REPO / "train" / "examples" / "train.toml").read_text()
    for section, key, value in [
            ("model", "path", f"{data_root}/models/tiny-mistral"), ("data", "path", f"{data_root}/datasets/tiny-chat"),
            ("lora", "r", 8), ("train", "per_device_batch_size", 4), ("train", "grad_accum", 1),
            ("train", "learning_rate", 5e-3), ("train", "warmup_ratio", 0.0), ("train", "max_steps", 4),
            ("train", "save_steps", 0), ("train", "logging_steps", 1), ("train", "gradient_checkpointing", False)]:
        train = edit_toml(train, section, key, value)
    (tmp_path / "train.toml").write_text(train)

    env = ctl_env(moto_server, sshd, tmp_path / "home")
    rid = "readme-20260101-000001"
    try:
        r = ctl(["launch", "--existing", iid, "--config", str(tmp_path / "run.toml"), "--run-id", rid,
                 "--allow-no-gpu"], env, timeout=600, check=0)
        assert f"connecting to {sshd.user}@" in r.stdout  # as the non-root user, not root
        assert "stage model:" in r.stdout and "stage data:" in r.stdout
        assert "RESULT" not in r.stdout and "Traceback" not in r.stdout + r.stderr
        follow = re.search(rf"follow it:\s+(ctl tail {rid} .*)", r.stdout).group(1)
        assert f"--endpoint-url {moto_server.endpoint}" in follow

        # 3. Follow, inspect: the printed command, as printed (endpoint included), then status and runs.
        bare = {k: v for k, v in env.items() if k not in ("AWS_ENDPOINT_URL", "TRAINCTL_S3_ENDPOINT")}
        t = ctl([*follow.split()[1:], "--poll-s", "0.5", "--from-start"], bare, timeout=600)
        assert t.returncode == 0, t.stdout + t.stderr
        assert "COMPLETED" in t.stdout
        url = f"s3://{s3_bucket}/training-runs"
        st = json.loads(ctl(["status", rid, "--store", url, "--json"], env, check=0).stdout)
        assert st["outcome"] == "completed"
        runs = json.loads(ctl(["runs", "--store", url, "--json"], env, check=0).stdout)
        assert [row["run_id"] for row in runs] == [rid]
        done = run_store(moto_server, s3_bucket).read_complete(rid)
        assert done.final_metrics["step"] == 4 and any(a["name"] == "adapter" for a in done.artifacts)
    finally:
        end_run_processes(rid, data_root / "trainctl" / "runs" / rid)

    # Nothing under the root-owned data root is left to root where the login user writes later.
    uid = pwd.getpwnam(sshd.user).pw_uid
    assert os.stat(data_root).st_uid == 0
    owned_by_root = [str(p) for p in data_root.rglob("*") if p.lstat().st_uid != uid]
    assert owned_by_root == []
    staged = data_root / "models" / "tiny-mistral"
    assert sorted(p.name for p in staged.iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in tiny_model.iterdir())
