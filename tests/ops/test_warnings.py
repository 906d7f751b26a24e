"""Warnings (ops/warnings.py): each rule fires on its condition and clears when it ends; and from a real
agent run (an nvidia-smi stand-in on PATH printing low utilisation, a data volume under its configured
floor) `ctl status` lists them while the run's state stays running, and drops the GPU warning once
utilisation rises."""

from __future__ import annotations

import io
import os
import shutil
import sys
import time

import pytest

from agent.protocol.runstore import RunStore
from controller.views.report import summary_rows
from controller.views.status import collect, render
from ops.alerts import ledger as L
from ops.alerts.slack import ConsoleSink, Notifier, WebhookSink
from ops.state import Settings
from ops.sweep import Watcher
from ops.warnings import GIB, WarningSettings, assess_warnings
from tests.trainers.harness import Agents, wait_for

RUN = "warn-20260101-120000"
S = WarningSettings(window_s=60.0, no_learning_steps=10, overfit_evals=3)


def samples(n=10, **cols) -> dict:
    base = {"ts": [1000.0 + 10 * i for i in range(n)], "interval_s": 10.0, "ram_total_bytes": 64 * GIB,
            "ram_used_bytes": [8 * GIB] * n, "swap_used_bytes": [0] * n, "gpu_util_percent": [90.0] * n,
            "disk_free_bytes": [200 * GIB] * n}
    return {**base, **cols}


def kinds(**kw) -> list[str]:
    args = {"samples": samples(), "history": [], "config": {}, "training": True, **kw}
    return [w.kind for w in assess_warnings(args["samples"], args["history"], args["config"], args["training"], S)]


def test_each_rule_fires_and_clears():
    assert kinds() == []
    assert kinds(samples=samples(ram_used_bytes=[8 * GIB] * 9 + [60 * GIB])) == ["memory"]  # 94 % > 90 %
    assert kinds(samples=samples(swap_used_bytes=[i * 100 * 2 ** 20 for i in range(10)])) == ["memory"]  # swap grows
    assert kinds(samples=samples(gpu_util_percent=[10.0] * 10)) == ["gpu_idle"]
    assert kinds(samples=samples(gpu_util_percent=[10.0] * 10), training=False) == []  # only while training
    assert kinds(samples=samples(n=3, gpu_util_percent=[10.0] * 3)) == []  # not a whole window yet
    assert kinds(samples=samples(gpu_util_percent=[10.0] * 5 + [95.0] * 5)) == []  # cleared: mean back up
    assert kinds(samples=samples(disk_free_bytes=[200 * GIB] * 9 + [15 * GIB])) == ["disk"]  # default 20 GB
    assert kinds(samples=samples(disk_free_bytes=[15 * GIB] * 10), config={"box": {"min_free_gb": 10}}) == []
    flat = [{"step": i, "loss": 2.0} for i in range(1, 13)]
    assert kinds(history=flat) == ["no_learning"]
    assert kinds(history=flat[:10]) == []  # not N steps yet
    assert kinds(history=[*flat, {"step": 13, "loss": 1.5}]) == []  # lower than at the start: learning
    spike = [{"step": i, "loss": 1.0 - i / 100} for i in range(1, 8)] + [{"step": 8, "loss": 9.0}]
    assert kinds(history=spike) == ["no_learning"]
    evals = [{"step": i, "loss": 1.0 / i, **({"eval_loss": e} if e else {})}
             for i, e in enumerate([None, 1.0, None, 0.9, 0.95, 1.0, 1.1], start=1)]
    assert kinds(history=evals) == ["overfitting"]
    assert kinds(history=evals[:-1]) == []  # rose twice only
    assert kinds(history=[*evals, {"step": 8, "loss": 0.1, "eval_loss": 1.05}]) == []  # fell: cleared


TRAINER = '''
import json, os, sys, time
end = sys.argv[1]
def rec(r):
    with open(os.environ["TRAINCTL_PROGRESS_FILE"], "a") as fh:
        fh.write(json.dumps(r) + "\\n")
rec({"phase": "training"})
step = 0
while not os.path.exists(end):
    step += 1
    rec({"step": step, "loss": 1.0 / step, "lr": 1e-4})
    time.sleep(0.05)
'''


def test_warnings_from_a_real_agent_run_listed_by_status_then_cleared(agents, tmp_path, local_store, slack):
    bin_dir, util = tmp_path / "bin", tmp_path / "util"
    bin_dir.mkdir()
    util.write_text("12")
    (bin_dir / "nvidia-smi").write_text(f'#!/bin/sh\necho "0, NVIDIA A10G, $(cat {util}), 4096, 23028, 40"\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    script, end = tmp_path / "trainer.py", tmp_path / "end"
    script.write_text(TRAINER)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TRAINCTL_SAMPLE_S": "0.1", "TRAINCTL_SAMPLES_WRITE_S": "0.2"}
    proc = agents.start(RUN, str(local_store.root), tmp_path / "wd", [sys.executable, str(script), str(end)],
                        env=env, extra=["--heartbeat-s", "0.2"])
    rs = RunStore(local_store)
    free_gb = shutil.disk_usage(tmp_path).free / GIB
    # The data volume's floor configured above what is free (a folder "of a configured size").
    ws = WarningSettings(window_s=2.0, min_free_gb=free_gb + 1, check_s=0.001)  # judged at every sweep
    settings = Settings(warnings=ws)

    def status():
        return collect(rs, RUN, time.time(), None, settings)

    wait_for(lambda: rs.read_heartbeat(RUN), 60, "the first heartbeat")

    def listed(want):
        d = status()
        return d if {w["kind"] for w in d["warnings"]} >= want else None

    w = Watcher(rs, Notifier(WebhookSink(slack.webhook_url), ConsoleSink(io.StringIO())), settings)

    def sent() -> list[str]:
        w.sweep(time.time())  # the watcher's real sweep: assess, ledger, policy, message, webhook
        return [p["body"]["text"].splitlines()[0] for p in slack.posts]

    d = wait_for(lambda: listed({"gpu_idle", "disk"}), 60, "gpu_idle and disk warnings")
    # A warning is no incident: healthy, or "late" when a loaded box delays a beat (late neither alerts nor resolves)
    assert d["state"] in ("healthy", "late") and d["outcome"] == "running" and d["error"] is None
    assert "warning    gpu_idle: GPU utilisation 12% on average" in render(d, time.time())
    assert {k for k, _ in summary_rows(d)} >= {"warning: gpu_idle", "warning: disk"}  # ctl report's outcome table
    heads = wait_for(lambda: (h := sent()) and {"🟡 Warning: gpu_idle", "🟡 Warning: disk"} <= set(h) and h, 60,
                     "the two warnings sent")
    for _ in range(5):
        heads = sent()
    assert sorted(heads) == ["🟡 Warning: disk", "🟡 Warning: gpu_idle"]  # each once, no incident alert
    assert all("\nStatus: WARNING\n" in p["body"]["text"] for p in slack.posts)  # its own label, not the state
    util.write_text("95")
    wait_for(lambda: "gpu_idle" not in {x["kind"] for x in status()["warnings"]}, 60, "gpu_idle to clear")
    heads = wait_for(lambda: (h := sent()) and any(x.startswith("🟢 Warning cleared: gpu_idle") for x in h) and h,
                     60, "the gpu_idle warning resolved")
    assert status()["state"] in ("healthy", "late") and len(heads) == 3
    led = L.load(rs, RUN).ledger
    assert led.incident is None and list(led.warnings) == ["disk"]
    end.touch()
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    assert status()["warnings"] == []  # a finished run has none
    heads = sent()
    assert heads[3].startswith("✅") and len(heads) == 4, heads  # the completion, and nothing about warnings
    assert f"\nLoss curve: {rs.location(RUN, 'artifacts/loss_curve.png')}\n" in slack.posts[3]["body"]["text"]


def test_thresholds_are_settings_from_the_environment():
    from agent.protocol.errors import ConfigError
    from controller.views.facts import view_settings

    s = view_settings({"TRAINCTL_WARN_RAM_SHARE": "0.5", "TRAINCTL_WARN_NO_LEARNING_STEPS": "20",
                       "TRAINCTL_WARN_WINDOW_S": "300"}).warnings
    assert (s.ram_share, s.no_learning_steps, s.window_s, s.gpu_util_min) == (0.5, 20, 300.0, 50.0)
    assert view_settings({}).warnings == WarningSettings()
    for bad in ({"TRAINCTL_WARN_SPIKE_K": "lots"}, {"TRAINCTL_WARN_OVERFIT_EVALS": "0"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            view_settings(bad)
    half = samples(ram_used_bytes=[40 * GIB] * 10)  # 62 %: only under a 50 % threshold
    assert assess_warnings(half, [], {}, True, WarningSettings()) == []
    assert [w.kind for w in assess_warnings(half, [], {}, True, s)] == ["memory"]


def test_policy_sends_each_warning_once_backs_off_repeats_and_resolves():
    from ops.alerts.policy import decide_warnings
    from ops.state import RunState
    from ops.warnings import RunWarning

    led, s = L.Ledger(run_id=RUN), Settings()
    st, w = RunState("healthy", "ok", 0.0, "training"), [RunWarning("gpu_idle", "GPU utilisation 10%")]
    assert decide_warnings(led, w, st, 100.0, s) and [m["kind"] for m in led.outbox] == ["warning"]
    assert not decide_warnings(led, w, st, 200.0, s)  # still on: nothing before the first repeat (1 h)
    assert decide_warnings(led, w, st, 100.0 + 3600, s) and led.outbox[-1]["repeat"] == 1
    assert not decide_warnings(led, w, st, 100.0 + 7200, s)  # the next one 4 h later
    assert decide_warnings(led, w, st, 100.0 + 3600 + 14400, s) and led.outbox[-1]["repeat"] == 2
    assert decide_warnings(led, [], st, 20000.0, s)
    assert led.outbox[-1]["kind"] == "warning_resolved" and led.outbox[-1]["lasted_s"] == 19900.0
    assert led.warnings == {} and led.incident is None and led.state is None  # never an incident
    led.closed = True
    assert not decide_warnings(led, w, st, 30000.0, s)  # a finished run: its final message speaks
