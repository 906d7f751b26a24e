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


def test_launch_without_credentials_says_how_to_get_them(moto_server, tmp_path):
    (tmp_path / "train.toml").write_text("[lora]\nr = 8\n")
    iid = "i-0123456789abcdef0"
    r = subprocess.run([sys.executable, "-m", "trainctl", "launch", "--existing", iid, "--store", "s3://some-bucket/runs",
                        "--endpoint-url", moto_server.endpoint, "--trainer-config", str(tmp_path / "train.toml")],
                       capture_output=True, text=True, env=no_aws_env(tmp_path), cwd=tmp_path, timeout=120)
    assert_refused(r, "NoCredentialsError", "aws configure", "AWS_PROFILE", "aws sso login", max_lines=1)
    assert not (tmp_path / "home" / ".trainctl" / "known_hosts").exists()


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


# --- one did-you-mean for all three files; the examples and README snippets validate --------------

@pytest.mark.parametrize("cls_name, override, hint", [
    ("TrainConfig", "lr=1e-4", "(did you mean 'train.learning_rate'?)"),  # run.example.toml's own example
    ("TrainConfig", "train.max_seq_length=512",  # TRL's habit: it lives in data.toml, not near max_steps
     "('max_seq_length' lives in data.toml as 'tokenizer.max_seq_length'; then re-run ctl train prepare)"),
    ("TrainConfig", "train.gradient_accumulation_steps=8", "(did you mean 'train.grad_accum'?)"),
    ("TrainConfig", "lora.lora_alpha=16", "(did you mean 'lora.alpha'?)"),
    ("TrainConfig", "train.region=eu-west-1", "('region' lives in run.toml as 'instance.region')"),
    ("DataConfig", "validation.learning_rate=1e-4",
     "('learning_rate' lives in train.toml as 'train.learning_rate')"),
    ("DataConfig", "lora.r=8", "([lora] is a section of train.toml)"),
])
def test_a_key_that_lives_elsewhere_says_where(cls_name, override, hint):
    import controller.config  # noqa: F401  (registers run.toml, as ctl launch does)
    import train.schemas as schemas
    from agent.protocol.errors import ConfigError
    from train.config import load_config

    cls = getattr(schemas, cls_name)
    sources = ["sources=[{path = 'x'}]"] if cls is schemas.DataConfig else []
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, [*sources, override], validate=False)
    key = override.partition("=")[0]
    key = key.partition(".")[0] if "section" in hint else key  # an unknown section is reported by its name
    assert str(err.value) == f"--set {override}: unknown key '{key}' {hint}"


def test_a_train_toml_key_in_run_toml_says_where_it_lives():
    from agent.protocol.errors import ConfigError
    from controller import config as c

    with pytest.raises(ConfigError) as err:
        c.resolve({"name": "m", "trainer": {"command": ["python", "t.py"], "learning_rate": 1e-4}})
    assert str(err.value) == ("run.toml: unknown key 'trainer.learning_rate' "
                              "('learning_rate' lives in train.toml as 'train.learning_rate')")


def _toml_snippets(doc: Path) -> list[str]:
    import re

    return re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)


def _validate_any(raw: dict, where: str) -> None:
    """Validate a whole example file or a README snippet against the one schema whose sections it uses."""
    from controller import config as c
    from train.config import build
    from train.schema_walk import all_keys
    from train.schemas import DataConfig, TrainConfig

    schemas = {"run.toml": c.RunConfig, "train.toml": TrainConfig, "data.toml": DataConfig}
    fits = [label for label, cls in schemas.items() if set(raw) <= {k for k in all_keys(cls) if "." not in k}]
    assert fits, f"{where}: its sections {sorted(raw)} fit no config file"
    label = fits[0]
    if label == "run.toml":
        base = {"name": "m", "trainer": {"config": "train.toml"}}  # ctl train sft, unless it names its command
        c.resolve({**base, **raw, "trainer": {**base["trainer"], **raw.get("trainer", {})}}, source=where)
    else:
        layers = [("base", {"sources": [{"path": "x"}]})] if label == "data.toml" else []
        build(schemas[label], [*layers, (where, raw)], source=where, disk=False)


def test_every_example_file_and_readme_snippet_parses_and_validates():
    import tomllib

    files = [REPO / "controller" / "run.example.toml", *sorted((REPO / "train" / "examples").glob("*.toml"))]
    for f in files:
        _validate_any(tomllib.loads(f.read_text()), str(f.relative_to(REPO)))
    snippets = [(doc, s) for doc in sorted(REPO.glob("**/README.md")) if ".venv" not in doc.parts
                for s in _toml_snippets(doc)]
    assert snippets, "the README's toml snippets were not found"
    for doc, snippet in snippets:
        _validate_any(tomllib.loads(snippet), f"{doc.relative_to(REPO)} snippet")


# --- model folders: one line before any model is loaded -------------------------------------------

def _broken_copy(tiny_model: Path, tmp_path: Path, drop: tuple[str, ...]) -> Path:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    for pattern in drop:
        for f in folder.glob(pattern):
            f.unlink()
    return folder


@pytest.mark.parametrize("drop, needle", [
    (("*.safetensors", "*.bin"), "has no model weights"),
    (("tokenizer.json", "tokenizer.model", "vocab.json"), "has no tokenizer"),
], ids=["no-weights", "no-tokenizer"])
def test_train_commands_refuse_an_incomplete_model_folder(drop, needle, tiny_model, tmp_path):
    from tests.fixtures.tiny_model import prepare_tiny_dataset

    data = prepare_tiny_dataset(tmp_path / "d", ["some text to pack into blocks " * 8] * 4, tiny_model)
    folder = _broken_copy(tiny_model, tmp_path, drop)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "empty.toml").write_text("")
    sets = ["--config", str(tmp_path / "empty.toml"), "--set", f"model.path={folder}", "--set", f"data.path={data}", "--set", f"train.output_dir={out}"]
    sft = ctl(["train", "sft", *sets], env, timeout=300)
    assert_refused(sft, "model.path", needle)
    assert not out.exists()
    est = ctl(["train", "estimate", *sets, "--gpu-mem", "24GiB"], env, timeout=300)
    assert_refused(est, "model.path", needle)  # estimate refuses what sft refuses, never "fits"
    assert "fits" not in est.stdout
    if needle == "has no tokenizer":  # prepare needs only the tokenizer
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "d.jsonl").write_text('{"text": "hello"}\n')
        prep = ctl(["train", "prepare", "--config", str(tmp_path / "empty.toml"), "--set", f"tokenizer.path={folder}", "--set", f"output_dir={tmp_path / 'p'}",
                    "--set", f"sources=[{{path='{tmp_path / 'src'}'}}]"], env, timeout=300)
        assert_refused(prep, "tokenizer.path", needle)
        assert not (tmp_path / "p").exists()


def test_a_sharded_model_missing_a_shard_names_it(tiny_model, tmp_path):
    import json

    from train.modelfolder import folder_problem

    folder = _broken_copy(tiny_model, tmp_path, ("*.safetensors",))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert "lacks 1 weight shard(s)" in folder_problem(str(folder), weights=True)
    assert "model-00002-of-00002.safetensors" in folder_problem(str(folder), weights=True)
    assert folder_problem(str(tiny_model), weights=True) is None


@pytest.mark.parametrize("args, needle", [(["--gpu-mem", "0GiB"], "more than 0 bytes"),
                                          (["--gpu-mem", "-24GiB"], "write a size like 24GiB")])
def test_estimate_refuses_sizes_that_cannot_be(args, needle, tmp_path):
    (tmp_path / "empty.toml").write_text("")
    r = ctl(["train", "estimate", "--config", str(tmp_path / "empty.toml"), "--arch", "mistral-7b", "--seq-len", "512",
             *args], {**os.environ, "PYTHONPATH": str(REPO)})
    assert_refused(r, needle)


# --- ctl launch: the cheapest check first, nothing touched for a refused launch -------------------

def test_a_malformed_instance_id_is_named_before_the_missing_config(tmp_path):
    # No run.toml anywhere: the id is what is wrong first, not the trainer the config would name.
    r = subprocess.run([sys.executable, "-m", "trainctl", "launch", "--existing", "i-123"], capture_output=True,
                       text=True, env=no_aws_env(tmp_path), cwd=tmp_path, timeout=120)
    assert_refused(r, "'i-123' is not an EC2 instance id", "i-0123456789abcdef0", max_lines=1)
    assert r.returncode == 2


def test_a_train_toml_out_of_range_refuses_the_launch_before_any_connection(moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    (tmp_path / "train.toml").write_text("[lora]\nr = -4\n")
    env = no_aws_env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     TRAINCTL_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "trainctl", "launch", "--host", "ubuntu@127.0.0.1:1",
                        "--store", f"s3://{bucket}/runs", "--endpoint-url", moto_server.endpoint,
                        "--trainer-config", str(tmp_path / "train.toml")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert_refused(r, "lora.r: -4 is below the minimum 1", max_lines=1)
    assert r.returncode == 2 and "connecting" not in r.stdout
    assert moto_server.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert not (tmp_path / "home" / "known_hosts").exists()


def test_a_local_launch_refuses_an_incomplete_model_before_the_run_exists(tiny_model, tmp_path):
    folder = _broken_copy(tiny_model, tmp_path, ("*.safetensors", "*.bin"))
    (tmp_path / "train.toml").write_text(f'[model]\npath = "{folder}"\n')
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "trainctl", "launch", "--local", "--trainer-config",
                        str(tmp_path / "train.toml")], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env=no_aws_env(tmp_path, TRAINCTL_HOME=str(home)))
    assert_refused(r, "model.path", "has no model weights", max_lines=1)
    assert r.returncode == 2 and not (home / "runs").exists() and not (home / "box").exists()


def test_a_staged_model_prefix_without_a_tokenizer_refuses_the_launch_before_the_box(moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    s3 = moto_server.client("s3")
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        s3.put_object(Bucket=bucket, Key=f"models/m/{name}", Body=b"{}")
    (tmp_path / "train.toml").write_text("[lora]\nr = 8\n")
    env = no_aws_env(tmp_path, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                     TRAINCTL_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "trainctl", "launch", "--host", "ubuntu@127.0.0.1:1",
                        "--store", f"s3://{bucket}/runs", "--endpoint-url", moto_server.endpoint,
                        "--trainer-config", str(tmp_path / "train.toml"), "--set", f"stage.model='s3://{bucket}/models/m/'"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert_refused(r, f"stage.model: s3://{bucket}/models/m/ has no tokenizer", "tokenizer.json", max_lines=1)
    assert r.returncode == 2 and "connecting" not in r.stdout
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 3  # nothing written
    assert not (tmp_path / "home" / "known_hosts").exists()
