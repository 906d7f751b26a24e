"""The agent's duties fail on their own: with real agent processes and moto's S3 server, artifact
PUTs refused by a bucket policy back off uploads only, while log chunks and heartbeats keep
arriving; once the policy is lifted the upload goes through and the run completes. Also the
run's cost on its markers (`--hourly-usd`, `--price-basis`)."""

from __future__ import annotations

import json
import sys

from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.trainers.harness import Agents, chunk_seqs, trainer_cmd, wait_for

RUN = "duty-20260101-120000"

# A trainer that declares a checkpoint early, then keeps logging until the test lets it finish.
TRAINER = r'''
import json, os, sys, time
out, go = os.environ["TRAINCTL_OUTPUT_DIR"], sys.argv[1]
def progress(rec):
    with open(os.environ["TRAINCTL_PROGRESS_FILE"], "a") as fh:
        fh.write(json.dumps(rec) + "\n")
os.makedirs(f"{out}/checkpoint-1", exist_ok=True)
with open(f"{out}/checkpoint-1/trainer_state.pt", "wb") as fh:
    fh.write(os.urandom(2048))
progress({"phase": "training"})
progress({"artifact": "checkpoint-1", "path": "checkpoint-1/", "final": False})
i, deadline = 0, time.time() + 120
while not os.path.exists(go) and time.time() < deadline:
    print(f"line {i}", flush=True)
    progress({"step": i + 1, "loss": 1.0 / (i + 1)})
    i += 1
    time.sleep(0.05)
os.makedirs(f"{out}/adapter", exist_ok=True)
with open(f"{out}/adapter/adapter_model.safetensors", "wb") as fh:
    fh.write(os.urandom(4096))
progress({"artifact": "adapter", "path": "adapter/", "final": True})
print("done", flush=True)
'''


def _deny_artifact_puts(s3, bucket: str) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/training-runs/{RUN}/artifacts/*"}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def test_a_failing_artifact_upload_backs_off_uploads_only(agents, moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    s3 = moto_server.client("s3")
    _deny_artifact_puts(s3, bucket)
    rs = RunStore(S3Store(bucket, "training-runs", endpoint_url=moto_server.endpoint, region=REGION))
    script, go = tmp_path / "trainer.py", tmp_path / "go"
    script.write_text(TRAINER)
    # A long backoff cap: were the backoff agent-wide, logs and heartbeats would stall behind it.
    proc = agents.start(RUN, f"s3://{bucket}/training-runs", tmp_path / "wd", [sys.executable, str(script), str(go)],
                        env=moto_server.env(), endpoint=moto_server.endpoint, extra=["--retry-max-s", "20"])
    wait_for(lambda: "artifacts: store unreachable" in Agents.output(proc), what="the refused artifact upload")
    hb0, chunks0 = rs.read_heartbeat(RUN).seq, len(chunk_seqs(rs, RUN))
    wait_for(lambda: rs.read_heartbeat(RUN).seq >= hb0 + 4 and len(chunk_seqs(rs, RUN)) >= chunks0 + 3,
             what="heartbeats and log chunks while the upload is refused")
    out = Agents.output(proc)
    assert "spooling locally" not in out and "log shipping: store unreachable" not in out
    assert "heartbeat: store unreachable" not in out
    assert rs.read_complete(RUN) is None and proc.poll() is None
    assert not list(rs.store.list(f"{RUN}/artifacts/"))

    s3.delete_bucket_policy(Bucket=bucket)
    wait_for(lambda: "artifacts: store reachable again" in Agents.output(proc), timeout=60,
             what="the upload to go through once the store takes it")
    go.touch()
    assert agents.wait(proc, 90) == 0, Agents.output(proc)
    done = rs.read_complete(RUN)
    assert done is not None and rs.read_error(RUN) is None
    assert {a["name"] for a in done.artifacts} == {"checkpoint-1", "adapter"}
    assert rs.read_logs(RUN).data.endswith(b"done\n")


def test_markers_carry_the_runs_cost(agents, tmp_path):
    store = tmp_path / "store"
    rs = RunStore(LocalStore(store))
    ok = agents.start(RUN, str(store), tmp_path / "wd", trainer_cmd("--lines", "5", "--adapter", "ok"),
                      extra=["--hourly-usd", "3.6", "--price-basis", "spot"])
    assert agents.wait(ok) == 0, Agents.output(ok)
    done = rs.read_complete(RUN)
    assert done.price_basis == "spot"
    assert done.cost_usd == round(3.6 * max(60.0, done.duration_s) / 3600, 2)
    assert done.cost_usd >= 0.06  # EC2's 60 s minimum

    failed = "duty-20260101-120001"
    bad = agents.start(failed, str(store), tmp_path / "wd2", trainer_cmd("--lines", "5", "--exit", "3"),
                       extra=["--hourly-usd", "7.2"])
    assert agents.wait(bad) == 0, Agents.output(bad)
    err = rs.read_error(failed)
    assert err.price_basis == "on-demand"  # the default basis
    assert err.cost_usd == round(7.2 * max(60.0, err.duration_s) / 3600, 2) and err.cost_usd >= 0.12

    unpriced = "duty-20260101-120002"
    assert agents.wait(agents.start(unpriced, str(store), tmp_path / "wd3", trainer_cmd("--lines", "2"))) == 0
    assert (rs.read_complete(unpriced).cost_usd, rs.read_complete(unpriced).price_basis) == (None, None)


def test_a_duty_backs_off_alone_and_recovers_only_when_the_store_answers(caplog):
    from agent.daemon.duties import Duties, Duty
    from agent.protocol.errors import StoreError

    calls: dict[str, list[float]] = {"uploads": [], "logs": []}
    answers = iter([StoreError("AccessDenied"), False, True])  # refused, resubmitted (in flight), collected

    def upload(now):
        calls["uploads"].append(now)
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    duties = Duties([Duty("artifacts", upload, retry_max_s=100.0), Duty("log shipping", calls["logs"].append)])
    caplog.set_level("DEBUG", logger="trainctl.agent")
    duties.run(0.0)
    assert duties.down() == ["artifacts"] and calls["logs"] == [0.0]
    assert "artifacts: store unreachable" in caplog.text
    for t in (0.1, 0.2):  # the upload waits out its backoff (0.25 s or more); the logs do not
        duties.run(t)
    assert calls["uploads"] == [0.0] and calls["logs"] == [0.0, 0.1, 0.2]
    duties.run(1.0)  # resubmitted: still backing off until the store has answered
    assert duties.down() == ["artifacts"] and "reachable again" not in caplog.text
    duties.run(1.1)
    assert duties.down() == [] and "artifacts: store reachable again" in caplog.text
