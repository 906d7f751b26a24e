"""The `ctl` entry point: fast import, version, help on every command, errors as one clean line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
from click.testing import CliRunner

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from trainctl.cli import main


def _walk(cmd: click.Command, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, path + (name,))


def test_importing_the_cli_imports_no_heavy_libraries():
    code = ("import sys, trainctl.cli; heavy=[m for m in ('torch','transformers','datasets','peft','bitsandbytes') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_and_help():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("ctl, version ")
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "runs" in r.output


def test_every_command_has_help_text():
    missing = []
    for path, cmd in _walk(main):
        if not (cmd.help or cmd.short_help):
            missing.append(" ".join(path) or "ctl")
        r = CliRunner().invoke(main, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help and param.name != "version":
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert missing == [], f"commands/options without help: {missing}"


def test_runs_table_and_json(tmp_path):
    rs = RunStore(LocalStore(tmp_path / "s"))
    rs.write_metadata(p.Metadata(run_id="a-20250101-000000", created=1.0, phase="training"))
    rs.write_progress("a-20250101-000000", p.Progress(ts=2.0, step=7, total_steps=10, loss=0.5, phase="training"))
    rs.write_metadata(p.Metadata(run_id="b-20250102-000000", created=2.0, phase="training"))
    rs.write_complete("b-20250102-000000", p.CompleteMarker(ts=3, duration_s=2))
    r = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["run_id"]: row for row in json.loads(r.output)}
    assert rows["a-20250101-000000"]["step"] == 7 and rows["a-20250101-000000"]["outcome"] == "running"
    assert rows["b-20250102-000000"]["outcome"] == "completed"
    r = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0 and "a-20250101-000000" in r.output and "7/10" in r.output


def test_runs_against_s3(moto_server, s3_store):
    RunStore(s3_store).write_metadata(p.Metadata(run_id="s3run-20250101-000000", created=1.0))
    env = {**os.environ, **moto_server.env()}
    r = subprocess.run([sys.executable, "-m", "trainctl", "runs", "--store", s3_store.url, "--json"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert [row["run_id"] for row in json.loads(r.stdout)] == ["s3run-20250101-000000"]


def test_bad_store_is_one_clean_line():
    r = subprocess.run([sys.executable, "-m", "trainctl", "runs", "--store", "gs://nope/x"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: unsupported store URL")


def test_unreachable_s3_store_is_one_clean_line(tmp_path):
    from tests.fixtures.net import free_port

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"}
    r = subprocess.run([sys.executable, "-m", "trainctl", "runs", "--store", "s3://b/p",
                        "--endpoint-url", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: S3 list s3://b/p/ failed")


def test_runs_shows_a_diverged_loss(tmp_path):
    # JSON has no NaN: the agent stores a diverged loss as the string "nan"; the table must not crash.
    rs = RunStore(LocalStore(tmp_path / "s"))
    rs.write_metadata(p.Metadata(run_id="nan-20250101-000000", created=1.0))
    rs.write_progress("nan-20250101-000000", p.Progress(ts=2.0, step=5, loss="nan"))
    r = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "nan" in r.output and "5" in r.output
