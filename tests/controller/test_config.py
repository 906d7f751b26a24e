"""run.toml validation: one clear line per mistake, exit code 2, flags override the file."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from agent.protocol.errors import ConfigError
from controller import config as c
from trainctl.cli import main

GOOD = {"name": "mistral", "trainer": {"command": ["python", "train.py"]}}


def test_defaults_and_resolved_dict():
    cfg = c.resolve(GOOD)
    assert cfg.box.data_root == "/mnt/training" and cfg.box.require_mount and cfg.instance.start_if_stopped
    d = cfg.to_dict()
    assert d["agent"]["heartbeat_s"] == 30.0 and d["trainer"]["command"] == ["python", "train.py"]


@pytest.mark.parametrize("raw, expected", [
    ({"boxx": {}}, "unknown key 'boxx' (did you mean 'box'?)"),
    # The did-you-mean names the whole key, as --set takes it (one walker for run.toml and train.toml).
    ({"box": {"data_rot": "/x"}}, "unknown key 'box.data_rot' (did you mean 'box.data_root'?)"),
    ({"box": {"min_free_gb": "lots"}}, "box.min_free_gb: expected a number, got 'lots'"),
    ({"box": {"min_free_gb": -1}}, "box.min_free_gb: -1.0 is below the minimum 0"),
    ({"ssh": {"port": 70000}}, "ssh.port: 70000 is above the maximum 65535"),
    ({"ssh": {"port": 22.5}}, "ssh.port: expected an integer, got 22.5"),
    ({"instance": {"address": "elastic"}}, "instance.address: 'elastic' is not one of public, private"),
    ({"instance": {"allow_no_gpu": "yes"}}, "instance.allow_no_gpu: expected true or false, got 'yes'"),
    ({"setup": {"extras": "train"}}, "setup.extras: expected a list of strings, got 'train'"),
    ({"box": "big"}, "box: expected a table [box], got 'big'"),
    ({"box": {"data_root": "mnt/training"}}, "box.data_root: 'mnt/training' must be an absolute path"),
    ({"stage": {"model": "/local/model"}}, "stage.model: '/local/model' must be an s3:// prefix"),
    ({"name": "bad name"}, "name: 'bad name' must be 1-48 letters"),
])
def test_each_mistake_is_one_clear_line(raw, expected):
    merged = {**GOOD, **raw}
    with pytest.raises(ConfigError) as ei:
        c.resolve(merged)
    assert expected in str(ei.value)
    assert ei.value.exit_code == 2


def test_all_mistakes_reported_together():
    raw = {**GOOD, "boxx": {}, "ssh": {"port": "22", "usr": "x"}, "agent": {"heartbeat_s": 0}}
    with pytest.raises(ConfigError) as ei:
        c.resolve(raw)
    msg = str(ei.value)
    assert msg.startswith("4 problem(s)")
    assert len(msg.splitlines()) == 5


def test_flags_override_file_and_set_parses_toml_values():
    raw = {**GOOD, "box": {"data_root": "/mnt/a", "min_free_gb": 100}}
    k, v = c.parse_override("box.min_free_gb=20")
    cfg = c.resolve(raw, {"box.data_root": "/mnt/b", k: v, "ssh.user": None})
    assert cfg.box.data_root == "/mnt/b" and cfg.box.min_free_gb == 20.0 and cfg.ssh.user == ""
    assert c.parse_override("setup.extras=['agent']") == ("setup.extras", ["agent"])
    assert c.parse_override("ssh.user=ubuntu") == ("ssh.user", "ubuntu")  # bare words are strings
    with pytest.raises(ConfigError):
        c.parse_override("no-equals-sign")


def test_trainer_needs_a_command_or_a_config():
    with pytest.raises(ConfigError, match="trainer.config"):
        c.resolve({"name": "x"})


def test_cli_bad_config_exit_2_one_line_per_mistake_no_traceback(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('name = "m"\n[box]\nmin_free_gb = "lots"\ndata_rot = "/x"\n[ssh]\nport = 99999\n'
                 '[trainer]\ncommand = ["true"]\n')
    r = subprocess.run([sys.executable, "-c", "from trainctl.cli import main; main()", "launch", "--local",
                        "--config", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("Error: 3 problem(s)")
    assert any("box.min_free_gb: expected a number" in ln for ln in lines)
    assert any("did you mean 'box.data_root'" in ln for ln in lines)
    assert any("ssh.port: 99999 is above the maximum" in ln for ln in lines)
    assert len(lines) == 4


def test_cli_invalid_toml_and_bad_set_flag(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("name = \n")
    r = CliRunner().invoke(main, ["launch", "--local", "--config", str(f)])
    assert r.exit_code == 2 and "not valid TOML" in r.output
    r = CliRunner().invoke(main, ["launch", "--local", "--set", "agent.heartbeat_s=fast", "--", "true"])
    assert r.exit_code == 2 and "agent.heartbeat_s: expected a number, got 'fast'" in r.output
    r = CliRunner().invoke(main, ["launch", "--local", "--host", "a@b", "--", "true"])
    assert r.exit_code == 2 and "choose one of" in r.output


def test_example_run_toml_is_valid():
    from pathlib import Path

    import controller

    cfg = c.load(Path(controller.__file__).parent / "run.example.toml")
    assert cfg.setup.python.endswith("pytorch/bin/python") and cfg.stage.workers == 8


def test_file_paths_in_run_toml_are_relative_to_it(tmp_path):
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "run.toml"
    f.write_text('[trainer]\nconfig = "train.toml"\n[ssh]\nkey = "~/.ssh/k.pem"\nconfig = "/etc/ssh/ssh_config"\n')
    cfg = c.load(f, {"setup.wheel": "dist/x.whl"})
    assert cfg.trainer.config == str(tmp_path / "cfg" / "train.toml")
    assert cfg.ssh.key == "~/.ssh/k.pem" and cfg.ssh.config == "/etc/ssh/ssh_config"
    assert cfg.setup.wheel == "dist/x.whl"  # flags stay relative to where ctl runs


def test_secrets_go_to_the_env_file_never_to_metadata(monkeypatch):
    from controller.launch.runenv import env_file_bytes, recorded_config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    cfg = c.resolve({**GOOD, "trainer": {"command": ["t"], "env": {"HF_TOKEN": "hf_x", "MODE": "fast"}},
                     "store": {"forward_aws_credentials": True}})
    recorded = str(recorded_config(cfg))
    assert "hf_x" not in recorded and "fast" in recorded and "EXAMPLEKEY" not in recorded
    env = env_file_bytes(cfg, "eu-west-1", [{"name": "model", "dest": "/mnt/training/models/m"}]).decode()
    assert "HF_TOKEN=hf_x\n" in env and "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n" in env
    assert "TRAINCTL_MODEL_DIR=/mnt/training/models/m\n" in env and "AWS_DEFAULT_REGION=eu-west-1\n" in env


def test_train_toml_is_checked_with_the_trainers_schema_before_launch(tmp_path):
    t = tmp_path / "train.toml"
    t.write_text("[train]\nlearning_rte = 1e-4\n")
    r = CliRunner().invoke(main, ["launch", "--existing", "i-0123456789abcdef0", "--trainer-config", str(t)])
    assert r.exit_code == 2 and "learning_rte" in r.output and "learning_rate" in r.output
    t.write_text("[train]\nlearning_rate = 1e-4\n")
    r = CliRunner().invoke(main, ["launch", "--existing", "i-0123456789abcdef0", "--trainer-config", str(t),
                                  "--train-set", "train.max_stepz=3"])
    assert r.exit_code == 2 and "max_stepz" in r.output


@pytest.mark.parametrize("raw, expected", [
    # A key under the wrong section or at the top: one did-you-mean over every key of every section.
    ({"ssh": {"region": "eu-west-1"}}, "unknown key 'ssh.region' (did you mean 'store.region'?)"),
    ({"box": {"heartbeat_s": 5}}, "unknown key 'box.heartbeat_s' (did you mean 'agent.heartbeat_s'?)"),
    ({"heartbeat_s": 5}, "unknown key 'heartbeat_s' (did you mean 'agent.heartbeat_s'?)"),
    ({"trainer": {"workers": 4}}, "unknown key 'trainer.workers' (did you mean 'stage.workers'?)"),
])
def test_did_you_mean_looks_across_sections(raw, expected):
    with pytest.raises(ConfigError) as ei:
        c.resolve({**GOOD, **raw})
    assert str(ei.value) == f"run.toml: {expected}"


def test_each_line_names_where_the_mistake_came_from_and_cross_field_rules_join_in():
    raw = {**GOOD, "name": "bad name", "ssh": {"port": "22"}}
    with pytest.raises(ConfigError) as ei:
        c.resolve(raw, {"agent.heartbeat_s": "fast", "stage.model": "/local"}, "cfg/run.toml")
    assert str(ei.value).splitlines() == [
        "4 problem(s):",
        "  cfg/run.toml: ssh.port: expected an integer, got '22'",
        "  flags: agent.heartbeat_s: expected a number, got 'fast'",
        "  cfg/run.toml: name: 'bad name' must be 1-48 letters, digits, _ or -",
        "  flags: stage.model: '/local' must be an s3:// prefix",
    ]


def test_run_toml_and_train_toml_share_one_override_parser():
    from train.config import parse_override as train_parse

    assert c.parse_override("box.min_free_gb=20") == train_parse("box.min_free_gb=20") == ("box.min_free_gb", 20)
    with pytest.raises(ConfigError, match=r"expected key=value \(SECTION.KEY=VALUE\), e.g. --set box.min_free_gb=20"):
        c.parse_override("no-equals-sign")
