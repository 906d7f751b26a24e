"""The loss-curve PNG and `ctl report` from real agent runs (local-folder store): the PNG decodes and the
series it drew (its trainctl-series chunk) are history.json's; the HTML parses, its inline PNGs decode,
and its embedded series match history.json and samples.json; a running run and a failed run report too;
an agent without matplotlib still ends its run, with no PNG."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from agent.protocol import plots
from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from tests.trainers.harness import CTL, REPO, Agents, wait_for

RUN = "report-20260101-120000"
# A trainer that logs 12 steps (loss falling, lr decaying, tokens/s), an evaluation every 4 steps,
# then waits for a go-file (when given) and exits with the code it is told.
TRAINER = '''
import json, os, sys, time
go, code = sys.argv[1], int(sys.argv[2])
def rec(r):
    with open(os.environ["TRAINCTL_PROGRESS_FILE"], "a") as fh:
        fh.write(json.dumps(r) + "\\n")
rec({"phase": "training"})
for s in range(1, 13):
    rec({"step": s, "total_steps": 12, "loss": 3.0 / s, "lr": 1e-3 * (13 - s) / 12, "tokens_per_s": 900.0 + s})
    if s % 4 == 0:
        rec({"eval_loss": 2.5 / s + 0.1})
    print("step", s, flush=True)
    time.sleep(0.05)
while go != "-" and not os.path.exists(go):
    time.sleep(0.05)
sys.exit(code)
'''


class _Page(HTMLParser):
    """The parts of the report a test checks: img sources, the series script, table cells."""

    def __init__(self):
        super().__init__()
        self.imgs, self.series, self.cells, self._in = [], None, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        self._in = "series" if tag == "script" and a.get("id") == "trainctl-series" else tag

    def handle_data(self, data):
        if self._in == "series":
            self.series = json.loads(data)
        elif self._in in ("td", "th"):
            self.cells.append(data)

    def handle_endtag(self, tag):
        self._in = None


def run_agent(agents, tmp_path, store, go="-", code=0, env=None):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {"TRAINCTL_SAMPLE_S": "0.1", "TRAINCTL_SAMPLES_WRITE_S": "0.2", **(env or {})}
    return agents.start(RUN, str(store.root), tmp_path / "wd", [sys.executable, str(script), go, str(code)], env=env)


def png_series(png: bytes) -> dict:
    img = Image.open(io.BytesIO(png))
    img.load()  # decodes the whole image
    assert img.format == "PNG" and img.size[0] > 100
    return json.loads(img.text[plots.SERIES_CHUNK])


def want_loss_series(history: list[dict]) -> dict:
    want = {"loss": [[h["step"], h["loss"]] for h in history],
            "eval_loss": [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
            "lr": [[h["step"], h["lr"]] for h in history]}
    return {k: v for k, v in want.items() if v}  # a run that has not evaluated yet draws no eval line


def report(tmp_path, store, *args) -> tuple[Path, _Page]:
    out = tmp_path / "r.html"
    res = subprocess.run([*CTL, "report", RUN, "--store", str(store.root), "--out", str(out), "--no-instance", *args],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    page = _Page()
    page.feed(out.read_text())
    return out, page


def test_completed_run_curve_and_report_match_history(agents, tmp_path, local_store):
    proc = run_agent(agents, tmp_path, local_store)
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    rs = RunStore(local_store)
    history = rs.read_history(RUN)
    assert [h["step"] for h in history] == list(range(1, 13))
    assert [h["eval_loss"] for h in history if "eval_loss" in h] == pytest.approx([2.5 / s + 0.1 for s in (4, 8, 12)])
    drawn = png_series(local_store.get(p.key(RUN, p.LOSS_CURVE)))
    assert drawn["series"] == want_loss_series(history)

    out, page = report(tmp_path, local_store, "--png")
    by_title = {s["title"]: s["series"] for s in page.series}
    assert by_title["loss"] == want_loss_series(history)
    t0 = rs.read_metadata(RUN).created
    assert by_title["tokens per second"]["tokens_per_s"] == [
        [round((h["ts"] - t0) / 60, 4), h["tokens_per_s"]] for h in history]
    samples = local_store.get_json(p.key(RUN, p.SAMPLES))
    ram = [[round((t - t0) / 60, 4), v / 1024 ** 3] for t, v in zip(samples["ts"], samples["ram_used_bytes"], strict=True)]
    assert by_title["host RAM"]["ram_used_gib"] == ram and len(ram) >= 2
    assert "disk free" in by_title and "GPU utilisation" not in by_title  # no nvidia-smi here: no GPU plot
    assert len(page.imgs) == len(page.series)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        png_series(base64.b64decode(src.split(",", 1)[1]))
    assert "completed" in page.cells and "training finished; no artifacts declared, none verified" in page.cells
    written = sorted(x.name for x in tmp_path.glob("r-*.png"))
    assert written == ["r-disk_free.png", "r-host_RAM.png", "r-loss.png", "r-tokens_per_second.png"]
    assert png_series((tmp_path / "r-loss.png").read_bytes())["series"] == want_loss_series(history)


def test_running_then_failed_run_report(agents, tmp_path, local_store):
    go = tmp_path / "go"
    proc = run_agent(agents, tmp_path, local_store, go=str(go), code=3)
    rs = RunStore(local_store)
    wait_for(lambda: (rs.read_progress(RUN) or p.Progress(ts=0)).step == 12, 60, "step 12 in the store")
    stored = wait_for(lambda: rs.read_history(RUN), 60, "a first history.json")  # rewritten every 60 s
    _, page = report(tmp_path, local_store)  # while it runs: what the store has now
    assert "still running" in page.cells and rs.read_error(RUN) is None
    assert {s["title"]: s["series"] for s in page.series}["loss"] == want_loss_series(stored)
    go.touch()
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    err = rs.read_error(RUN)
    assert err is not None
    history = rs.read_history(RUN)
    assert png_series(local_store.get(p.key(RUN, p.LOSS_CURVE)))["series"] == want_loss_series(history)
    _, page = report(tmp_path, local_store)
    assert err.cause in page.cells and err.remediation in page.cells and "failed" in page.cells


def test_agent_without_matplotlib_ends_the_run_without_a_png(agents, tmp_path, local_store):
    hide = tmp_path / "nomatplotlib"
    hide.mkdir()
    (hide / "matplotlib.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    proc = run_agent(agents, tmp_path, local_store, env={"PYTHONPATH": f"{hide}:{REPO}"})
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    assert RunStore(local_store).read_complete(RUN) is not None
    assert local_store.get(p.key(RUN, p.LOSS_CURVE)) is None
    assert "loss curve: not stored (ImportError" in Agents.output(proc)
