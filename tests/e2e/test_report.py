"""The loss curve and `ctl report` from real training runs: a tiny 4-bit QLoRA run (`ctl train sft`)
under the agent with the local-folder store, and the unmodified HF Trainer script under the agent on
moto's S3. In both the agent's PNG decodes and drew history.json's series; the report's HTML parses,
its inline PNGs decode, and the series it embeds are history.json's (eval loss too, from the HF run).
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from agent.protocol import plots
from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from agent.protocol.store_s3 import S3Store
from tests.fixtures.moto_server import REGION
from tests.fixtures.tiny_model import prepare_tiny_dataset
from tests.trainers.harness import CTL, REPO, Agents

pytestmark = pytest.mark.slow
RUN = "curve-20260101-120000"
SCRIPT = str(REPO / "tests" / "trainers" / "hf_trainer_script.py")
SFT = str(Path(sys.executable).parent / "ctl")
TRAINER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TRAINCTL_SAMPLE_S": "0.5", "TRAINCTL_SAMPLES_WRITE_S": "1"}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.series, self._in = [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        self._in = tag == "script" and a.get("id") == "trainctl-series"

    def handle_data(self, data):
        if self._in:
            self.series = json.loads(data)


def drawn(png: bytes) -> dict:
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG"
    return json.loads(img.text[plots.SERIES_CHUNK])["series"]


def want(history: list[dict]) -> dict:
    out = {"loss": [[h["step"], h["loss"]] for h in history],
           "eval_loss": [[h["step"], h["eval_loss"]] for h in history if "eval_loss" in h],
           "lr": [[h["step"], h["lr"]] for h in history if h.get("lr") is not None]}
    return {k: v for k, v in out.items() if v}


def check(rs: RunStore, store_args: list[str], tmp_path: Path, env: dict) -> dict:
    """The stored PNG and the report agree with history.json; returns the report's series by title."""
    history = rs.read_history(RUN)
    assert len(history) >= 3
    assert drawn(rs.store.get(p.key(RUN, p.LOSS_CURVE))) == want(history)
    out = tmp_path / "report.html"
    res = subprocess.run([*CTL, "report", RUN, *store_args, "--out", str(out), "--no-instance"], env=env,
                         capture_output=True, text=True, cwd=REPO, timeout=180)
    assert res.returncode == 0, res.stderr
    page = _Page()
    page.feed(out.read_text())
    by_title = {s["title"]: s["series"] for s in page.series}
    assert by_title["loss"] == want(history)
    assert len(page.imgs) == len(page.series) and "host RAM" in by_title and "disk free" in by_title
    for src in page.imgs:
        drawn(base64.b64decode(src.split(",", 1)[1]))
    return by_title


def test_tiny_qlora_run_curve_and_report(agents, tiny_model, tmp_path):
    data = prepare_tiny_dataset(tmp_path / "data", [f"a note about curves number {i}" for i in range(60)], tiny_model)
    cfg = tmp_path / "train.toml"
    cfg.write_text(f'[model]\npath = "{tiny_model}"\n[data]\npath = "{data}"\n[lora]\nr = 8\nalpha = 16\n'
                   "[train]\nper_device_batch_size = 4\ngrad_accum = 1\nlearning_rate = 5e-3\nwarmup_ratio = 0.2\n"
                   "max_steps = 8\nsave_steps = 0\nlogging_steps = 1\n")
    store = LocalStore(tmp_path / "store")
    proc = agents.start(RUN, str(store.root), tmp_path / "wd", [SFT, "train", "sft", "--config", str(cfg)],
                        env=TRAINER_ENV)
    assert agents.wait(proc, 600) == 0, Agents.output(proc)
    rs = RunStore(store)
    assert rs.read_complete(RUN) is not None, Agents.output(proc)
    series = check(rs, ["--store", str(store.root)], tmp_path, None)
    assert [pt[0] for pt in series["loss"]["loss"]] == list(range(1, 9))
    assert len({pt[1] for pt in series["loss"]["lr"]}) > 1  # warm-up then decay: the lr axis moves


def test_hf_trainer_run_on_s3_curve_and_report(agents, tiny_model, tmp_path, moto_server, s3_bucket):
    url = f"s3://{s3_bucket}/training-runs"
    cmd = [sys.executable, SCRIPT, "--model", str(tiny_model), "--out", str(tmp_path / "wd" / "output" / "hf"),
           "--steps", "6", "--save-steps", "0", "--eval-steps", "3"]
    env = {**moto_server.env(), **TRAINER_ENV}
    proc = agents.start(RUN, url, tmp_path / "wd", cmd, env=env, endpoint=moto_server.endpoint)
    assert agents.wait(proc, 600) == 0, Agents.output(proc)
    rs = RunStore(S3Store(s3_bucket, "training-runs", endpoint_url=moto_server.endpoint, region=REGION))
    assert rs.read_complete(RUN) is not None, Agents.output(proc)
    series = check(rs, ["--store", url, "--endpoint-url", moto_server.endpoint], tmp_path,
                   {**os.environ, "PYTHONPATH": str(REPO), **moto_server.env()})
    assert [pt[0] for pt in series["loss"]["eval_loss"]] == [3, 6]  # the script's evaluations, at their steps
