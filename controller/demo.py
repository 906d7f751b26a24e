"""`make demo`: the main job on the embedded default (this machine, the local-folder store, a tiny model).

Every step is the `ctl` command a user would type, printed before it runs:
1. write a tiny Mistral-architecture model and prepare the bundled notes into Arrow blocks;
2. `ctl launch --local` a real 4-bit QLoRA run, then `ctl tail` it to `_complete` (exit 0);
3. launch a run with a NaN injected at step 5, and `ctl tail` it to `_error` (exit 1, cause and fix);
4. `ctl status` shows the failed run on one screen.
State lives under demo-out/ (TRAINCTL_HOME defaults to demo-out/trainctl), so a second demo is quick.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
CTL = [sys.executable, "-c", "import sys; from trainctl.cli import main; sys.argv[0] = 'ctl'; main()"]


def ctl(*args: str, env: dict, expect: int = 0) -> int:
    """Run `ctl args...` in the repo root, echoing the command; fail the demo on an unexpected exit code."""
    print(f"\n$ ctl {' '.join(shlex.quote(a) for a in args)}", flush=True)
    code = subprocess.run([*CTL, *args], cwd=ROOT, env=env).returncode
    if code != expect:
        raise SystemExit(f"demo: `ctl {args[0]}` exited {code}, expected {expect}")
    return code


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.setdefault("TRAINCTL_HOME", str(OUT / "trainctl"))
    env.pop("TRAINCTL_STORE", None)  # the embedded default: $TRAINCTL_HOME/runs
    model, data = OUT / "tiny-model", OUT / "prepared"
    if not (model / "config.json").is_file():
        ctl("train", "make-tiny-model", str(model), env=env)
    if not (data / "report.json").is_file():
        ctl("train", "prepare", "--config", "train/examples/demo-data.toml", env=env)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    common = ["--trainer-config", "train/examples/demo-train.toml", "--train-set", f"model.path={model}",
              "--train-set", f"data.path={data}", "--set", "agent.heartbeat_s=5"]
    good, bad = f"demo-{stamp}", f"demo-nan-{stamp}"
    watch = ["watch", "--once", "--no-ec2"]
    ctl("launch", "--local", "--run-id", good, *common, env=env)
    ctl("tail", good, "--lines", "5", "--poll-s", "1", env=env, expect=0)
    ctl(*watch, env=env)
    ctl("launch", "--local", "--run-id", bad, *common, "--train-set", "debug.inject_nan_at_step=5", env=env)
    ctl("tail", bad, "--lines", "5", "--poll-s", "1", env=env, expect=1)
    ctl(*watch, env=env)
    ctl("status", bad, "--no-instance", env=env)
    print(where_things_are(Path(env["TRAINCTL_HOME"]) / "runs", good, bad))
    return 0


def sparkline(values: list[float]) -> str:
    """The loss curve in one line of block characters (higher block = higher loss)."""
    bars = "▁▂▃▄▅▆▇█"
    finite = [v for v in values if isinstance(v, int | float)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(bars[min(7, int((v - lo) / span * 7.999))] if isinstance(v, int | float) else "!" for v in values)


def where_things_are(store_root: Path, good: str, bad: str) -> str:
    """The closing summary: the adapter, the logs and the loss curve of the good run."""
    from agent.protocol import records as p
    from agent.protocol.runstore import RunStore
    from agent.protocol.store_local import LocalStore

    rs = RunStore(LocalStore(store_root))
    done = rs.read_complete(good)
    history = rs.read_history(good)
    losses = [pt.get("loss") for pt in history if "loss" in pt]
    adapter = next((a.get("uri") for a in (done.artifacts if done else []) if a.get("name") == "adapter"),
                   rs.artifact_location(good, "adapter/"))
    curve = sparkline(losses)
    first, last = (p.fmt_metric(losses[0]), p.fmt_metric(losses[-1])) if losses else ("-", "-")
    return "\n".join([
        "",
        f"demo done: {good} completed, {bad} failed as intended.",
        f"  adapter     {adapter}",
        f"  logs        {rs.location(good, p.LOGS)}  (latest: {p.LOG_LATEST})",
        f"  loss curve  {rs.location(good, p.HISTORY)}  {curve}  {first} -> {last}",
        f"  failed run  {rs.location(bad, p.ERROR)}",
        f"  all runs    ctl runs --store {store_root}",
    ])


if __name__ == "__main__":
    sys.exit(main())
