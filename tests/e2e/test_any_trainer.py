"""Any trainer under the real agent (`ctl agent run`): an unmodified HF Trainer script on the tiny model,
with the local-folder store and with moto's S3. Progress comes from the script's output (or from
TrainctlCallback when it is added), each checkpoint-N folder and the final output land in the store
verified, `_complete` lists them; a declared output that is missing fails the run with its own cause,
and a bad --progress-regex is refused in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.protocol import records as p
from agent.protocol.attempts import newest_stored_checkpoint
from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.trainers.harness import CTL, REPO, Agents, trainer_cmd

pytestmark = pytest.mark.slow

RUN = "hf-20260101-120000"
SCRIPT = str(REPO / "tests" / "trainers" / "hf_trainer_script.py")
CHECKPOINTS = ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """{rs, url, env, endpoint} for a local-folder store or a bucket on moto's S3 server."""
    if request.param == "local":
        from agent.protocol.store_local import LocalStore

        return {"rs": RunStore(LocalStore(tmp_path / "store")), "url": str(tmp_path / "store"), "env": {},
                "endpoint": None}
    moto, bucket = request.getfixturevalue("moto_server"), request.getfixturevalue("s3_bucket")
    s3 = S3Store(bucket, "training-runs", endpoint_url=moto.endpoint, region=REGION)
    return {"rs": RunStore(s3), "url": f"s3://{bucket}/training-runs", "env": moto.env(), "endpoint": moto.endpoint}


def run_hf(agents, store, tmp_path, tiny_model, *script_args, extra=()):
    """The HF script under the agent, saving into the agent's output dir; returns (agent rc, output, log history)."""
    wd, hist = tmp_path / "wd", tmp_path / "log_history.json"
    cmd = [sys.executable, SCRIPT, "--model", str(tiny_model), "--out", str(wd / "output" / "hf"), "--steps", "6",
           "--save-steps", "2", "--eval-steps", "3", "--history", str(hist), *script_args]
    env = {**store["env"], "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = agents.start(RUN, store["url"], wd, cmd, env=env, extra=list(extra), endpoint=store["endpoint"])
    rc = agents.wait(proc, 300)
    out = Agents.output(proc)
    return rc, out, json.loads(hist.read_text()) if hist.exists() else []


def stored_files(rs: RunStore, name: str) -> set[str]:
    prefix = rs.artifact_key(RUN, f"{name}/")
    return {k[len(prefix):] for k in rs.list_artifacts(RUN) if k.startswith(prefix)}


def check_artifacts(rs: RunStore, done: p.CompleteMarker, final: str) -> None:
    """Each checkpoint and the final output in the store, verified, listed in `_complete`, none twice."""
    names = sorted(a["name"] for a in done.artifacts)
    assert names == sorted([*CHECKPOINTS, final])
    assert done.artifacts_verified == 4 and done.reason == "training finished; 4 artifacts verified"
    for ckpt in CHECKPOINTS:
        files = stored_files(rs, ckpt)
        assert {"trainer_state.json", "config.json", "model.safetensors"} <= files, files
    final_files = stored_files(rs, final)
    assert "model.safetensors" in final_files and not any(f.startswith("checkpoint-") for f in final_files)
    by_name = {a["name"]: a for a in done.artifacts}
    assert by_name[final]["final"] is True and by_name[final]["files"] == len(final_files)
    assert newest_stored_checkpoint(rs, RUN).name == "checkpoint-6"  # what `ctl launch --resume` would fetch


def test_unmodified_hf_script_progress_and_artifacts(agents, store, tmp_path, tiny_model):
    rc, out, history = run_hf(agents, store, tmp_path, tiny_model, extra=["--checkpoints", "hf", "--artifact", "hf"])
    rs = store["rs"]
    assert rc == 0, out
    done = rs.read_complete(RUN)
    assert done is not None and rs.read_error(RUN) is None, out
    logged = [h for h in history if "loss" in h]
    pr = rs.read_progress(RUN)
    assert (pr.step, pr.total_steps) == (6, 6)
    assert pr.loss == pytest.approx(logged[-1]["loss"], rel=1e-3)
    assert pr.lr == pytest.approx(logged[-1]["learning_rate"], rel=1e-3)
    assert pr.epoch == pytest.approx(logged[-1]["epoch"], rel=1e-3)
    assert pr.eval_loss == pytest.approx([h for h in history if "eval_loss" in h][-1]["eval_loss"], rel=1e-3)
    hist = rs.read_history(RUN)
    assert [h["step"] for h in hist] == [h["step"] for h in logged] == [1, 2, 3, 4, 5, 6]
    for h, want in zip(hist, logged, strict=True):
        assert h["loss"] == pytest.approx(want["loss"], rel=1e-3)
    hb = rs.read_heartbeat(RUN)
    assert hb.progress_source == "output" and hb.last_log_ts is not None
    assert done.final_metrics["step"] == 6 and done.final_metrics["train_runtime_s"] > 0
    check_artifacts(rs, done, "hf")
    latest = rs.read_latest_log(RUN)
    assert "\r" not in latest and "6/6 [" in latest  # the bar by its last frame, not every redraw
    assert b"\r" in rs.read_logs(RUN).data  # the chunks stay byte-exact


def test_hf_script_with_the_callback(agents, store, tmp_path, tiny_model):
    rc, out, history = run_hf(agents, store, tmp_path, tiny_model, "--callback", extra=["--checkpoints", "hf"])
    rs = store["rs"]
    assert rc == 0, out
    done = rs.read_complete(RUN)
    assert done is not None, out
    logged = [h for h in history if "loss" in h]
    pr = rs.read_progress(RUN)
    assert (pr.step, pr.total_steps, pr.loss, pr.lr) == (6, 6, logged[-1]["loss"], logged[-1]["learning_rate"])
    assert [(h["step"], h["loss"]) for h in rs.read_history(RUN)] == [(h["step"], h["loss"]) for h in logged]
    assert rs.read_heartbeat(RUN).progress_source == "trainer"
    check_artifacts(rs, done, "model")  # the callback's final model is the output dir, its checkpoints apart


def test_a_declared_artifact_missing_fails_with_its_cause(agents, tmp_path):
    from agent.protocol.store_local import LocalStore

    rs = RunStore(LocalStore(tmp_path / "store"))
    proc = agents.start(RUN, str(tmp_path / "store"), tmp_path / "wd", trainer_cmd("--lines", "5"),
                        extra=["--artifact", "adapter", "--artifact", str(tmp_path / "nowhere" / "merged")])
    assert agents.wait(proc) == 0, Agents.output(proc)
    assert rs.read_complete(RUN) is None
    err = rs.read_error(RUN)
    assert err.cause == "artifact_missing" and err.exit_code == 0 and "adapter" in err.summary
    assert err.remediation and rs.read_metadata(RUN).phase == "failed"


def test_a_bad_progress_regex_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([*CTL, "agent", "run", "--run-id", RUN, "--store", str(tmp_path / "store"),
                           "--workdir", str(tmp_path / "wd"), "--progress-regex", "step (?P<step>\\d+",
                           "--", sys.executable, "-c", "print(1)"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --progress-regex:") and "does not compile" in lines[0]
    assert not (tmp_path / "wd").exists() and not (tmp_path / "store").exists()  # refused before anything ran


def test_run_toml_trainer_keys_reach_the_agent():
    """`[trainer] progress_regex / artifacts / checkpoints` in run.toml become the agent's flags, which
    the real agent CLI parses back to the same values; a regex that does not compile is refused at load."""
    from agent.protocol.errors import ConfigError
    from controller.config import resolve
    from controller.launch import plan
    from trainctl.cli import main

    rx = r"it (?P<step>\d+)/(?P<total>\d+) loss (?P<loss>[\d.]+)"
    cfg = resolve({"trainer": {"command": ["python", "train.py"], "progress_regex": rx,
                               "artifacts": ["adapter", "/data/merged"], "checkpoints": "hf"}})
    argv = plan.agent_argv(cfg, plan.Layout(cfg.box.data_root, "h"), RUN, "s3://b/runs", "")
    ctx = main.commands["agent"].commands["run"].make_context("run", argv[3:])
    assert ctx.params["progress_regex"] == rx and ctx.params["checkpoints"] == "hf"
    assert list(ctx.params["artifacts"]) == ["adapter", "/data/merged"]
    assert list(ctx.params["command"]) == ["python", "train.py"]
    with pytest.raises(ConfigError, match="progress_regex"):
        resolve({"trainer": {"command": ["python", "train.py"], "progress_regex": "(?P<step>\\d+"}})
