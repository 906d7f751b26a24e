"""A spot interruption end to end, on real parts: an IMDS stand-in on loopback gives the notice to a
real agent running the real 4-bit QLoRA trainer on the tiny model, against moto's S3; the run is
recorded as interrupted with its checkpoint in the store; then the same run id continues in
another workdir from that checkpoint, at the saved step, and completes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agent.protocol.attempts import archive_error, check_resumable, download_checkpoint, newest_stored_checkpoint
from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.imds import ImdsStandIn
from tests.fixtures.moto_server import REGION
from tests.fixtures.tiny_model import prepare_tiny_dataset
from tests.trainers.harness import Agents, wait_for

pytestmark = pytest.mark.slow
RUN = "spot-20260101-120000"
CTL = str(Path(sys.executable).parent / "ctl")
TRAINER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def packed(tiny_model, tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("spot-data"),
                                [f"spot notice {i} then a checkpoint and resume" for i in range(80)], tiny_model)


@pytest.fixture
def imds():
    s = ImdsStandIn()
    yield s
    s.close()


def steps(progress: Path) -> list[int]:
    if not progress.exists():
        return []
    return [r["step"] for r in map(json.loads, progress.read_text().splitlines()) if "loss" in r]


def test_spot_notice_checkpoints_records_interrupted_and_another_workdir_resumes(
        agents, imds, moto_server, s3_bucket, tiny_model, packed, tmp_path):
    rs = RunStore(S3Store(s3_bucket, "training-runs", endpoint_url=moto_server.endpoint, region=REGION))
    url = f"s3://{s3_bucket}/training-runs"
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{packed}"\n[lora]\nr = 8\nalpha = 16\n'
                   "[train]\nper_device_batch_size = 4\ngrad_accum = 1\nlearning_rate = 5e-3\nwarmup_ratio = 0.0\n"
                   "max_steps = 30\nsave_steps = 0\nlogging_steps = 1\n")
    trainer = [CTL, "train", "sft", "--config", str(cfg)]
    env = {**moto_server.env(), **TRAINER_ENV}

    wd1 = tmp_path / "box-a"
    a1 = agents.start(RUN, url, wd1, trainer, env=env, endpoint=moto_server.endpoint,
                      extra=["--imds-endpoint", imds.endpoint, "--imds-poll-s", "0.1", "--spot-checkpoint-s", "120"])
    wait_for(lambda: len(steps(wd1 / "progress.jsonl")) >= 2 or a1.poll() is not None, 180, "two training steps")
    assert a1.poll() is None, Agents.output(a1)
    imds.interrupt()
    assert agents.wait(a1, 180) == 0, Agents.output(a1)

    err = rs.read_error(RUN)
    assert err is not None and rs.read_complete(RUN) is None, Agents.output(a1)
    saved = steps(wd1 / "progress.jsonl")[-1]
    assert err.cause == "interrupted" and err.last_step == saved and 2 <= saved < 30, err
    assert "spot interruption (terminate at 2026-11-22T01:02:03Z)" in err.summary
    assert f"at step {saved}" in err.summary and f"checkpoint-{saved} (step {saved})" in err.summary
    assert err.checkpoint == rs.store.location(rs.artifact_key(RUN, f"checkpoint-{saved}/"))
    assert err.checkpoint in err.summary and f"--resume {RUN}" in err.remediation
    local = wd1 / "output" / f"checkpoint-{saved}" / "trainer_state.pt"
    assert rs.store.get(rs.artifact_key(RUN, f"checkpoint-{saved}/trainer_state.pt")) == local.read_bytes()
    assert not rs.store.exists(rs.artifact_key(RUN, "adapter/adapter_model.safetensors"))
    assert rs.read_metadata(RUN).phase == "interrupted"
    assert any(r[0] == "PUT" for r in imds.requests)  # IMDSv2: a token first
    chunks_before = len(list(rs.list_log_chunks(RUN)))

    # Another box: a fresh workdir gets the stored checkpoint, the old marker is archived, same run id.
    assert check_resumable(rs, RUN).cause == "interrupted"
    ckpt = newest_stored_checkpoint(rs, RUN, preferred=err.checkpoint)
    assert ckpt.step == saved
    wd2 = tmp_path / "box-b"
    download_checkpoint(rs, ckpt, wd2 / "output")
    assert archive_error(rs, RUN) == 1
    a2 = agents.start(RUN, url, wd2, trainer, env=env, endpoint=moto_server.endpoint, extra=["--imds-endpoint", "off"])
    assert agents.wait(a2, 240) == 0, Agents.output(a2)

    done = rs.read_complete(RUN)
    assert done is not None and rs.read_error(RUN) is None, Agents.output(a2)
    resumed = steps(wd2 / "progress.jsonl")
    assert resumed[0] > saved and resumed == list(range(saved + 1, 31))
    assert any(a["name"] == "adapter" for a in done.artifacts)
    assert rs.store.exists(rs.artifact_key(RUN, "adapter/adapter_model.safetensors"))
    log = rs.read_logs(RUN).data.decode()
    assert "received signal" in log and f"resuming from {wd2 / 'output' / f'checkpoint-{saved}'} at step {saved}/30" in log
    assert len(list(rs.list_log_chunks(RUN))) > chunks_before  # the second attempt appended, nothing overwritten
    assert rs.store.get(rs.k(RUN, "attempts/1/_error")) is not None
