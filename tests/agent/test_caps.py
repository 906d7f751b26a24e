"""Runtime and spend caps: a real agent around the fake trainer, with scaled-down limits, on a local
folder store; `ctl status` and `ctl watch --once` read what it left."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from agent.daemon.caps import cost_usd, reached
from agent.daemon.settings import AgentSettings
from agent.protocol.errors import ConfigError
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from controller.config import resolve
from controller.views.status import budget_left
from tests.trainers.harness import CTL, REPO, Agents, trainer_cmd

RUN = "caps-20260101-120000"


def ctl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CTL, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def capped_run(agents, tmp_path, *extra: str):
    """A trainer that would run for minutes (then hang), checkpointing on a stop signal, under `extra` caps."""
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd",
                        trainer_cmd("--lines", "100000", "--interval", "0.01", "--end", "hang",
                                    "--checkpoint-on-stop"), extra=list(extra))
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    return RunStore(LocalStore(store)), store, Agents.output(proc)


def test_runtime_cap_stops_gracefully_keeps_the_checkpoint_and_says_which_cap(agents, tmp_path):
    rs, store, out = capped_run(agents, tmp_path, "--max-runtime", "4s")
    err = rs.read_error(RUN)
    assert err.cause == "runtime_cap", out
    assert err.summary.startswith("runtime cap reached: ran ") and "(max_runtime 4s); checkpoint-7 (step 7) is in the store at " in err.summary
    assert err.duration_s >= 4.0 and err.signal is None and err.exit_code == 130  # it saved and exited itself
    assert "max_runtime" in err.remediation and "--resume" in err.remediation
    assert rs.read_metadata(RUN).phase == "failed"
    assert rs.read_metadata(RUN).budget["max_runtime_s"] == 4.0
    assert err.checkpoint.endswith(f"{RUN}/artifacts/checkpoint-7/")
    stored = set(rs.store.list(f"{RUN}/artifacts/checkpoint-7/"))
    assert f"{RUN}/artifacts/checkpoint-7/trainer_state.pt" in stored, stored
    assert "saved checkpoint-7" in rs.read_logs(RUN).data.decode()

    st = ctl("status", RUN, "--store", str(store))
    assert st.returncode in (0, 1), st.stderr
    assert "failed     runtime_cap" in st.stdout and "budget     runtime 0s left of 4s" in st.stdout, st.stdout
    alert = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert alert.returncode == 0, alert.stderr
    assert "🔥 Training FAILED: runtime_cap" in alert.stdout
    assert "runtime cap reached" in alert.stdout and "raise max_runtime under [trainer]" in alert.stdout


def test_cost_cap_stops_at_the_price_and_the_marker_carries_the_cost(agents, tmp_path):
    # $3600/h bills $60 for the first minute (EC2's minimum): a $1 cap is reached at the first look.
    rs, store, out = capped_run(agents, tmp_path, "--hourly-usd", "3600", "--max-cost", "1")
    err = rs.read_error(RUN)
    assert err.cause == "cost_cap", out
    assert err.summary.startswith("cost cap reached: $60.00 after ") and "(max_cost $1)" in err.summary
    assert err.cost_usd == 60.0 and err.price_basis == "on-demand"
    assert "raise max_cost" in err.remediation
    st = ctl("status", RUN, "--store", str(store), "--json")
    assert json.loads(st.stdout)["budget"] == "cost $0.00 left of $1.00 (at $3600/h)", st.stdout
    alert = ctl("watch", "--once", "--no-ec2", "--store", str(store))
    assert "🔥 Training FAILED: cost_cap" in alert.stdout and "raise max_cost" in alert.stdout


def test_a_run_inside_its_caps_completes_and_shows_what_is_left(agents, tmp_path):
    store = tmp_path / "store"
    proc = agents.start(RUN, str(store), tmp_path / "wd", trainer_cmd("--lines", "30", "--adapter", "ok"),
                        extra=["--max-runtime", "1h", "--hourly-usd", "1.2", "--max-cost", "50"])
    assert agents.wait(proc) == 0, Agents.output(proc)
    rs = RunStore(LocalStore(store))
    assert rs.read_complete(RUN) is not None and rs.read_error(RUN) is None
    st = ctl("status", RUN, "--store", str(store))
    assert "budget     runtime 59m" in st.stdout and "left of 1h 00m; cost $49.98 left of $50.00 (at $1.2/h)" in st.stdout


@pytest.mark.parametrize("args,message", [
    (["--max-runtime", "soon"], "--max-runtime: cannot read 'soon' as a duration"),
    (["--max-runtime", "0"], "--max-runtime must be above 0"),
    (["--max-cost", "5"], "--max-cost needs --hourly-usd"),
])
def test_bad_caps_are_one_clean_line(tmp_path, args, message):
    res = ctl("agent", "run", "--run-id", RUN, "--store", str(tmp_path / "s"), "--workdir", str(tmp_path / "wd"),
              *args, "--", "true")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "wd").exists()  # refused before anything started


def test_reached_and_budget_arithmetic():
    s = AgentSettings(max_runtime_s=3600.0, max_cost_usd=2.0, hourly_usd=1.2)
    assert reached(s, 3599.0) is None
    assert reached(s, 3600.0)["cause"] == "runtime_cap"
    assert cost_usd(1.2, 10.0) == pytest.approx(0.02)  # the 60 s minimum, as the marker is priced
    cheap = AgentSettings(max_cost_usd=2.0, hourly_usd=1.2)
    assert reached(cheap, 5999.0) is None and reached(cheap, 6000.0)["cause"] == "cost_cap"
    assert reached(AgentSettings(max_cost_usd=2.0), 1e9) is None  # no price: nothing to count
    left = budget_left({"max_runtime_s": 3600.0, "max_cost_usd": 2.0, "hourly_usd": 1.2, "started_ts": 100.0}, 1900.0)
    assert left == "runtime 30m 00s left of 1h 00m; cost $1.40 left of $2.00 (at $1.2/h)"


def test_run_toml_caps_reach_the_agent_flags():
    from controller.launch import plan

    cfg = resolve({"trainer": {"command": ["python", "t.py"], "max_runtime": "12h", "max_cost": 30}})
    assert plan.trainer_flags(cfg)[-2:] == ["--max-runtime", "12h"]
    lay = plan.Layout("/mnt/training", "h")
    priced = plan.agent_argv(cfg, lay, RUN, "s3://b/p", "", hourly_usd=1.212)
    assert priced[priced.index("--max-cost") + 1] == "30" and "--hourly-usd" in priced
    assert "--max-cost" not in plan.agent_argv(cfg, lay, RUN, "s3://b/p", "")  # no price: nothing to count in
    with pytest.raises(ConfigError, match=r"trainer.max_runtime: cannot read 'soon'"):
        resolve({"trainer": {"command": ["x"], "max_runtime": "soon"}})
