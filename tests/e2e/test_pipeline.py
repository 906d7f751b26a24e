"""The whole pipeline over real parts: a moto g5 instance reached through the sshd fixture, `ctl launch
--existing`, a real 4-bit QLoRA run of the tiny model under the real agent, `ctl tail`, and `ctl watch
--once` posting to the Slack stand-in; the adapter ends in moto's S3.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.e2e.harness import ctl, ctl_env, end_run_processes, headlines, new_instance, run_store, run_toml
from tests.fixtures.tiny_model import prepare_tiny_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tiny_model, tmp_path_factory):
    """A small dataset prepared with the real `prepare` into 64-token blocks."""
    return prepare_tiny_dataset(tmp_path_factory.mktemp("e2e-data"),
                                [f"the watcher alerts once per incident {i}; the agent ships every line" for i in range(60)],
                                tiny_model)


@pytest.fixture
def launched(moto_server, sshd, s3_bucket, tiny_model, prepared, tmp_path, data_root):
    """Launch a tiny QLoRA run on a moto instance; yields (run id, env, store url, run store)."""
    started: list[tuple[str, object]] = []
    train_toml = tmp_path / "train.toml"
    train_toml.write_text("[lora]\nr = 8\nalpha = 16\n[train]\nper_device_batch_size = 4\ngrad_accum = 1\n"
                          "learning_rate = 5e-3\nwarmup_ratio = 0.0\nmax_grad_norm = 1.0\nmax_steps = 4\n"
                          "save_steps = 0\nlogging_steps = 1\n")
    env = ctl_env(moto_server, sshd, tmp_path / "home")

    def go(run_id: str, *train_sets: str):
        iid = new_instance(moto_server, sshd)
        cfg = run_toml(tmp_path / f"{run_id}.toml", bucket=s3_bucket, endpoint=moto_server.endpoint,
                       data_root=data_root, trainer_config=train_toml,
                       train_sets=[f"model.path={tiny_model}", f"data.path={prepared}", *train_sets])
        started.append((run_id, data_root / "trainctl" / "runs" / run_id))
        r = ctl(["launch", "--existing", iid, "--config", str(cfg), "--run-id", run_id], env, check=0)
        assert f"run {run_id} started" in r.stdout
        return iid, env, f"s3://{s3_bucket}/training-runs", run_store(moto_server, s3_bucket)

    yield go
    for run_id, wd in started:
        end_run_processes(run_id, wd)


def watch_once(env, url, slack, moto_server):
    return ctl(["watch", "--once", "--store", url, "--slack-webhook", slack.webhook_url,
                "--heartbeat-grace", "60s"], {**env, "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint}, check=0)


def test_provision_free_path_completes_alerts_once_and_stores_the_adapter(launched, slack, moto_server):
    rid = "e2e-qlora-20260101-000001"
    iid, env, url, rs = launched(rid)
    t = ctl(["tail", rid, "--store", url, "--poll-s", "0.5", "--from-start"], env, timeout=300)
    assert t.returncode == 0, t.stdout + t.stderr
    assert "COMPLETED" in t.stdout

    done = rs.read_complete(rid)
    assert done is not None and rs.read_error(rid) is None
    loss = done.final_metrics["loss"]
    assert math.isfinite(loss) and done.final_metrics["step"] == 4
    (adapter,) = [a for a in done.artifacts if a["name"] == "adapter"]
    keys = rs.store.list(f"{rid}/artifacts/adapter/")
    names = {k.rsplit("/", 1)[-1] for k in keys}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert json.loads(rs.store.get(f"{rid}/artifacts/adapter/adapter_config.json"))["r"] == 8
    assert rs.read_metadata(rid).instance_id == iid
    st = json.loads(ctl(["status", rid, "--store", url, "--json"], env, check=0).stdout)
    assert st["outcome"] == "completed" and st["instance_state"] == "running"

    w = watch_once(env, url, slack, moto_server)
    assert "sent 1" in w.stderr, w.stderr
    assert headlines(slack) == ["✅ Training completed"], headlines(slack)
    text = slack.posts[0]["body"]["text"]
    assert rid in text and f"final loss {loss:.4f}" in text and adapter["uri"] in text
    watch_once(env, url, slack, moto_server)
    assert len(slack.posts) == 1  # a second sweep (a new watcher process) sends nothing again


def test_failure_path_nan_loss_alerts_once_with_remediation(launched, slack, moto_server):
    rid = "e2e-nan-20260101-000001"
    _, env, url, rs = launched(rid, "debug.inject_nan_at_step=2")
    t = ctl(["tail", rid, "--store", url, "--poll-s", "0.5", "--lines", "5"], env, timeout=300)
    assert t.returncode == 1, t.stdout + t.stderr
    assert "FAILED" in t.stdout and "fix:" in t.stdout

    err = rs.read_error(rid)
    assert err is not None and rs.read_complete(rid) is None
    assert err.cause == "nan_loss", err
    assert err.remediation

    w1 = watch_once(env, url, slack, moto_server)
    w2 = watch_once(env, url, slack, moto_server)
    assert len(slack.posts) == 1, w1.stdout + w1.stderr + w2.stdout + w2.stderr
    text = slack.posts[0]["body"]["text"]
    assert text.startswith("🔥 Training FAILED: nan_loss") and rid in text
    assert err.remediation.split(":")[0][:40] in text
