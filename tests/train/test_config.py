"""Config loading: defaults < file < --set, each validated; bad input is one clear line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agent.protocol.errors import ConfigError
from tests.fixtures.tiny_model import write_jsonl
from train.config import load_config, parse_override, to_dict, to_toml
from train.schemas import DataConfig, TrainConfig, resolve_output_dir
from trainctl.cli import main


@pytest.fixture
def train_toml(tmp_path, tiny_model):
    (tmp_path / "prepared" / "train").mkdir(parents=True)
    p = tmp_path / "train.toml"
    p.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{tmp_path / "prepared"}"\n'
                 '[train]\nper_device_batch_size = 2\nlearning_rate = 1e-4\n')
    return p


def test_file_then_set_overrides_in_that_order(train_toml):
    cfg = load_config(TrainConfig, train_toml, ["train.per_device_batch_size=8", "lora.target_modules=['q_proj']"])
    assert cfg.train.per_device_batch_size == 8  # --set beats the file
    assert cfg.train.learning_rate == 1e-4  # the file beats the default
    assert cfg.train.grad_accum == 16  # the default stays
    assert cfg.lora.target_modules == ["q_proj"]
    again = load_config(TrainConfig, None, [], validate=False)
    assert again.train.per_device_batch_size == 1  # defaults are not shared between loads


def test_resolved_config_round_trips_through_toml(train_toml, tmp_path):
    cfg = load_config(TrainConfig, train_toml, ["lora.dropout=0.1"])
    saved = tmp_path / "resolved.toml"
    saved.write_text(to_toml(to_dict(cfg)))
    assert to_dict(load_config(TrainConfig, saved)) == to_dict(cfg)


@pytest.mark.parametrize("override,message", [
    ("lora.rank=8", "unknown key 'lora.rank' (did you mean 'lora.r'?)"),
    ("train.learnin_rate=1e-4", "did you mean 'train.learning_rate'?"),
    ("train.per_device_batch_size=four", "train.per_device_batch_size must be an integer, got 'four'"),
    ("train.gradient_checkpointing=1", "must be true or false"),
    ("lora.target_modules=q_proj", "lora.target_modules must be a list"),
    ("train.optim=sgd", "train.optim must be one of auto, paged_adamw_8bit, adamw_torch"),
    ("model.path=/nonexistent/model", "model folder /nonexistent/model does not exist"),
    ("nokey", "expected key=value"),
])
def test_bad_values_are_one_clear_line(train_toml, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, train_toml, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_the_file_names_the_file(tmp_path, train_toml):
    bad = tmp_path / "bad.toml"
    bad.write_text(train_toml.read_text() + "[loraa]\nr = 4\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key 'loraa'"):
        load_config(TrainConfig, bad)


def test_cli_prints_one_error_line_and_exits_2(train_toml):
    result = CliRunner().invoke(main, ["train", "sft", "--config", str(train_toml), "--set", "lora.alpah=3"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["Error: --set lora.alpah=3: unknown key 'lora.alpah' (did you mean 'lora.alpha'?)"]
    missing = CliRunner().invoke(main, ["train", "prepare", "--config", "/nonexistent.toml"])
    assert missing.exit_code == 2 and missing.output.strip() == "Error: config file /nonexistent.toml does not exist"


def test_dataset_without_the_field_is_one_line_naming_the_field(tmp_path, tiny_model):
    write_jsonl(tmp_path / "src" / "d.jsonl", [{"body": f"record {i}"} for i in range(5)])
    toml = tmp_path / "data.toml"
    toml.write_text(f'output_dir = "{tmp_path / "out"}"\n[tokenizer]\npath = "{tiny_model}"\n'
                    f'[prepare]\nprogress = false\n[[sources]]\npath = "{tmp_path / "src"}"\n')
    result = CliRunner().invoke(main, ["train", "prepare", "--config", str(toml)])
    assert result.exit_code == 2
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "5 of 5 records rejected (missing_field: 5)" in line
    assert "validation.text_field='text'" in line
    fixed = CliRunner().invoke(main, ["train", "prepare", "--config", str(toml), "--set", "validation.text_field=body"])
    assert fixed.exit_code == 0, fixed.output
    assert "prepared 5 of 5 records" in fixed.output


def test_data_config_needs_sources_and_a_tokenizer(tmp_path, tiny_model):
    with pytest.raises(ConfigError, match=r"no \[\[sources\]\]"):
        load_config(DataConfig, None, [f"tokenizer.path={tiny_model!s}"])
    toml = tmp_path / "d.toml"
    toml.write_text('[[sources]]\npath = "x"\n[tokenizer]\npath = "/nope"\n')
    with pytest.raises(ConfigError, match="tokenizer.path: model folder /nope does not exist"):
        load_config(DataConfig, toml)


def test_output_dir_rule(train_toml, monkeypatch, tmp_path):
    cfg = load_config(TrainConfig, train_toml)
    monkeypatch.delenv("TRAINCTL_OUTPUT_DIR", raising=False)
    assert str(resolve_output_dir(cfg)) == "output"
    monkeypatch.setenv("TRAINCTL_OUTPUT_DIR", str(tmp_path / "agent-out"))
    assert resolve_output_dir(cfg) == tmp_path / "agent-out"
    with pytest.raises(ConfigError, match="disagrees with TRAINCTL_OUTPUT_DIR"):
        load_config(TrainConfig, train_toml, [f"train.output_dir={tmp_path / 'mine'}"])


def test_override_values_are_read_as_toml_else_as_strings():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=2e-4") == (["a", "b"], 2e-4)
    assert parse_override("a.b=/some/path") == (["a", "b"], "/some/path")
    assert parse_override("a=x=y") == (["a"], "x=y")
