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
    # One walker for run.toml, train.toml and data.toml: "<origin>: <key>: what is wrong", run.toml's wording.
    ("train.per_device_batch_size=four",
     "--set train.per_device_batch_size=four: train.per_device_batch_size: expected an integer, got 'four'"),
    ("train.gradient_checkpointing=1", "train.gradient_checkpointing: expected true or false, got 1"),
    ("lora.target_modules=q_proj", "lora.target_modules: expected a list of strings, got 'q_proj'"),
    ("train.optim=sgd", "train.optim: 'sgd' is not one of auto, paged_adamw_8bit, adamw_torch"),
    ("lora.r=0", "--set lora.r=0: lora.r: 0 is below the minimum 1"),
    ("lora.dropout=1.5", "--set lora.dropout=1.5: lora.dropout: 1.5 must be >= 0 and < 1"),
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
    # The one parse_override (run.toml's --set uses it too): the dotted key as typed, the value as TOML.
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=3").path == ["a", "b"]
    assert parse_override("a.b=2e-4") == ("a.b", 2e-4)
    assert parse_override("a.b=/some/path") == ("a.b", "/some/path")
    assert parse_override("a=x=y") == ("a", "x=y")
    for bad in ("nokey", "=3", "a..b=3"):
        with pytest.raises(ConfigError, match="expected key=value"):
            parse_override(bad)


def test_every_mistake_in_file_and_flags_is_reported_at_once(tmp_path, train_toml):
    bad = tmp_path / "bad.toml"
    bad.write_text(train_toml.read_text() + "[lora]\nrank = 4\ndropout = \"high\"\n[quant]\nquant_type = \"int3\"\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, bad, ["train.optim=sgd", "nokey", "train.learning_rate=-1.0"])
    lines = str(err.value).splitlines()
    assert lines[0] == "6 problem(s):"
    assert lines[1:] == [
        "  --set 'nokey': expected key=value (SECTION.KEY=VALUE), e.g. --set train.learning_rate=1e-4",
        f"  {bad}: unknown key 'lora.rank' (did you mean 'lora.r'?)",
        f"  {bad}: lora.dropout: expected a number, got 'high'",
        f"  {bad}: quant.quant_type: 'int3' is not one of nf4, fp4",
        "  --set train.optim=sgd: train.optim: 'sgd' is not one of auto, paged_adamw_8bit, adamw_torch",
        "  --set train.learning_rate=-1.0: train.learning_rate: -1.0 must be > 0",
    ]


def test_data_config_reports_every_mistake_and_names_where_each_came_from(tmp_path, tiny_model):
    toml = tmp_path / "data.toml"
    toml.write_text('[[sources]]\npath = "a"\n[[sources]]\npath = "b/a"\npth = "x"\n'
                    '[validation]\nformat = "html"\n[tokenizer]\npath = "/nope"\n')
    with pytest.raises(ConfigError) as err:
        load_config(DataConfig, toml, ["split.val_fraction=1.0"])
    lines = [line.strip() for line in str(err.value).splitlines()]
    assert lines[0] == "5 problem(s):"
    assert f"{toml}: unknown key 'sources[1].pth' (did you mean 'sources[1].path'?)" in lines
    assert f"{toml}: validation.format: 'html' is not one of text, chat" in lines
    assert f"{toml}: sources[1].name: 'a' is used twice; names must be unique" in lines
    assert "--set split.val_fraction=1.0: split.val_fraction: 1.0 must be >= 0 and < 1" in lines
    assert any(line.startswith(f"{toml}: tokenizer.path: model folder /nope does not exist") for line in lines)


@pytest.mark.parametrize("cls,override,message", [
    # A key under the wrong section: the one did-you-mean knows every key of every section.
    (TrainConfig, "lora.learning_rate=1e-4", "unknown key 'lora.learning_rate' (did you mean 'train.learning_rate'?)"),
    (TrainConfig, "train.r=8", "unknown key 'train.r' (did you mean 'lora.r'?)"),
    (TrainConfig, "loraa.r=8", "unknown key 'loraa' (did you mean 'lora'?)"),
    (DataConfig, "prepare.max_seq_length=64", "unknown key 'prepare.max_seq_length' "
                                              "(did you mean 'tokenizer.max_seq_length'?)"),
    (DataConfig, "validation.seed=1", "unknown key 'validation.seed' (did you mean 'split.seed'?)"),
])
def test_did_you_mean_looks_across_sections(cls, override, message):
    sources = ["sources=[{path = 'x'}]"] if cls is DataConfig else []
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, [*sources, override], validate=False)
    assert str(err.value) == f"--set {override}: {message}"


def test_without_validate_the_schema_limits_still_hold_but_the_disk_is_not_looked_at():
    cfg = load_config(TrainConfig, None, ["model.path=/not/here"], validate=False)
    assert cfg.model.path == "/not/here"
    with pytest.raises(ConfigError, match="train.epochs: 0.0 must be > 0"):
        load_config(TrainConfig, None, ["train.epochs=0"], validate=False)
    assert load_config(TrainConfig, None, ["train.epochs=0", "train.max_steps=5"], validate=False).train.epochs == 0.0
