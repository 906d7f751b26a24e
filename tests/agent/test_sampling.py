"""The agent's samples (samples.json): a real agent run with an nvidia-smi stand-in on PATH stores
host RAM, swap, GPU utilisation and memory and disk free over time; the series stays bounded however
long the run (downsampled, the interval doubling), and sampling off stores nothing."""

from __future__ import annotations

import json
import os
import sys

from agent.daemon.sampling import MAX_POINTS, Sampler
from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from tests.trainers.harness import Agents, trainer_cmd

RUN = "samples-20260101-120000"
SMI = """#!/bin/sh
# nvidia-smi stand-in: two GPUs, 10 % and 30 % busy, 2048 + 1024 MiB used of 23028 each
echo "0, NVIDIA A10G, 10, 2048, 23028, 41"
echo "1, NVIDIA A10G, 30, 1024, 23028, 40"
"""


def smi_on_path(tmp_path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_agent_run_stores_host_gpu_and_disk_samples(agents, tmp_path, local_store):
    env = {"PATH": smi_on_path(tmp_path), "TRAINCTL_SAMPLE_S": "0.1", "TRAINCTL_SAMPLES_WRITE_S": "0.3"}
    proc = agents.start(RUN, str(local_store.root), tmp_path / "wd", trainer_cmd("--lines", "40", "--interval", "0.03"),
                        env=env)
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    s = local_store.get_json(p.key(RUN, p.SAMPLES))
    n = len(s["ts"])
    assert n >= 3 and all(len(s[c]) == n for c in ("ram_used_bytes", "swap_used_bytes", "gpu_util_percent",
                                                     "gpu_mem_used_mib", "disk_free_bytes"))
    assert s["ts"] == sorted(s["ts"])
    assert set(s["gpu_util_percent"]) == {20.0} and set(s["gpu_mem_used_mib"]) == {3072}  # mean util, summed memory
    assert s["gpu_mem_total_mib"] == 2 * 23028 and s["ram_total_bytes"] > 0
    assert all(0 < r <= s["ram_total_bytes"] for r in s["ram_used_bytes"]) and min(s["disk_free_bytes"]) > 0
    assert RunStore(local_store).read_complete(RUN) is not None


def test_sampling_off_stores_nothing(agents, tmp_path, local_store):
    proc = agents.start(RUN, str(local_store.root), tmp_path / "wd", trainer_cmd("--lines", "10"),
                        env={"TRAINCTL_SAMPLE_S": "0"})
    assert agents.wait(proc, 120) == 0, Agents.output(proc)
    assert local_store.get(p.key(RUN, p.SAMPLES)) is None


def test_series_is_bounded_whatever_the_run_length(tmp_path, local_store):
    """A week at 15 s (40,320 samples) stores no more points, nor bytes, than MAX_POINTS allow; the
    bytes stored per hour of run are printed for the benchmark table."""
    rs = RunStore(local_store)
    sampler = Sampler(rs, RUN, tmp_path, every_s=15.0, write_s=60.0)
    sample = {"ram_used_bytes": 27_800_000_000, "swap_used_bytes": 1_000_000, "gpu_util_percent": 87.5,
              "gpu_mem_used_mib": 20480, "disk_free_bytes": 250_000_000_000, "ram_total_bytes": 68_000_000_000}
    sizes, t = {}, 1.8e9
    for hour in range(1, 24 * 7 + 1):
        for _ in range(int(3600 / sampler.every_s)):  # sampling slows as the series halves
            sampler.add(round(t, 1), sample)
            t += sampler.every_s
        sampler.flush()
        sizes[hour] = len(local_store.get(p.key(RUN, p.SAMPLES)))
    rec = json.loads(local_store.get(p.key(RUN, p.SAMPLES)))
    assert len(rec["ts"]) <= MAX_POINTS and rec["interval_s"] > 15.0
    assert rec["ts"] == sorted(rec["ts"]) and rec["ts"][-1] - rec["ts"][0] > 6 * 24 * 3600  # the whole week, coarser
    assert max(sizes.values()) < 80 * MAX_POINTS
    print(f"\nsamples.json bytes: 1h {sizes[1]}, 3h {sizes[3]}, 24h {sizes[24]}, 7d {sizes[24 * 7]} "
          f"(bounded by {MAX_POINTS} points)", file=sys.stderr)
