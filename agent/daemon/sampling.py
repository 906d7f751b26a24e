"""The agent's samples: host RAM, swap, GPU utilisation and memory, data-volume free space over time.

A heartbeat says how the box is now; `samples.json` says how it got there (RAM climbing during
tokenization, a disk filling with checkpoints), for `ctl report` and the watcher's warnings. One
sample at most every `every_s` (env TRAINCTL_SAMPLE_S, default 30; 0 turns sampling off), taken
from the heartbeat's own host and GPU facts (so sampling adds no nvidia-smi call: a sample per
heartbeat at most), stored at most every `write_s` (TRAINCTL_SAMPLES_WRITE_S, default 60) as
columns of numbers. Its size is bounded whatever the run length: past `max_points` samples every
other one is dropped and the interval doubles, as history.json halves its resolution, so a
week-long run stores as much as a day-long one.
"""

from __future__ import annotations

import json
import os

import psutil

from agent.protocol import records as p

COLUMNS = ("ts", "ram_used_bytes", "swap_used_bytes", "gpu_util_percent", "gpu_mem_used_mib", "disk_free_bytes")
MAX_POINTS = 720  # 6 h at 30 s before the first halving; ~60 bytes a point: ~45 KB at most


def _env_s(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def take(host: dict, gpus: list[dict]) -> dict:
    """One sample from a heartbeat's host and GPU facts (no second nvidia-smi call): host RAM (or,
    with a configured `ram_limit_bytes`, the agent's and trainer's RSS against that) and swap in
    use, mean GPU utilisation and total GPU memory in use (None without nvidia-smi), free bytes of
    the workdir's (data) volume."""
    sw = psutil.swap_memory()
    gpus = [g for g in gpus if "util_percent" in g]
    utils = [g["util_percent"] for g in gpus if isinstance(g.get("util_percent"), int | float)]
    mems = [g["mem_used_mib"] for g in gpus if isinstance(g.get("mem_used_mib"), int | float)]
    total, avail = host.get("ram_total_bytes"), host.get("ram_available_bytes")
    used = total - avail if total is not None and avail is not None else None
    if host.get("ram_limit_bytes"):  # a configured budget (--ram-total-gb): the run's own RSS against it
        total = host["ram_limit_bytes"]
        used = (host.get("trainer_rss_bytes") or 0) + (host.get("agent_rss_bytes") or 0)
    return {"ram_used_bytes": used,
            "swap_used_bytes": sw.used, "gpu_util_percent": round(sum(utils) / len(utils), 1) if utils else None,
            "gpu_mem_used_mib": sum(mems) if mems else None, "disk_free_bytes": host.get("disk_free_bytes"),
            "ram_total_bytes": total, "swap_total_bytes": sw.total,
            "gpu_mem_total_mib": sum(g["mem_total_mib"] for g in gpus
                                     if isinstance(g.get("mem_total_mib"), int | float)) or None}


class Sampler:
    """Collects samples into bounded columns and stores them as `samples.json`."""

    def __init__(self, rs, run_id: str, workdir, every_s: float | None = None, write_s: float | None = None,
                 max_points: int = MAX_POINTS):
        self.rs, self.run_id, self.workdir, self.max_points = rs, run_id, workdir, max(2, max_points)
        self.every_s = _env_s("TRAINCTL_SAMPLE_S", 30.0) if every_s is None else every_s
        self.write_s = _env_s("TRAINCTL_SAMPLES_WRITE_S", 60.0) if write_s is None else write_s
        self.cols: dict[str, list] = {c: [] for c in COLUMNS}
        self.totals: dict = {}
        self.interval_s = self.every_s
        self._next_at = 0.0
        self._write_at = 0.0
        self.dirty = False

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    def add(self, ts: float, sample: dict) -> None:
        """Append one sample; past `max_points`, halve the resolution (keep every other point)."""
        for c in COLUMNS:
            self.cols[c].append(ts if c == "ts" else sample.get(c))
        self.totals = {k: sample.get(k) for k in ("ram_total_bytes", "swap_total_bytes", "gpu_mem_total_mib")}
        if len(self.cols["ts"]) > self.max_points:
            self.cols = {c: v[::2] for c, v in self.cols.items()}
            self.interval_s *= 2
            self.every_s *= 2  # sample at the stored resolution: the agent's cost falls as the run ages
        self.dirty = True

    def record(self) -> dict:
        """samples.json: the columns, the totals and the current interval."""
        return {"schema_version": p.SCHEMA_VERSION, "interval_s": self.interval_s, **self.totals, **self.cols}

    def observe(self, hb: p.Heartbeat, now: float) -> None:
        """Take a sample from a heartbeat the agent just built, at most every `every_s`."""
        if self.enabled and now >= self._next_at:
            self.add(round(hb.ts, 1), take(hb.host, hb.gpus))
            self._next_at = now + self.every_s

    def tick(self, now: float) -> bool:
        """The duty: store what was sampled, at most every `write_s`. False when it did nothing."""
        if not (self.enabled and self.dirty and now >= self._write_at):
            return False
        self.flush()
        self._write_at = now + self.write_s
        return True

    def flush(self) -> None:
        """Store what was sampled (also at the end of the run)."""
        if self.enabled and self.dirty:
            # compact JSON: indented, each number would take its own line (3x the bytes)
            raw = json.dumps(self.record(), separators=(",", ":")).encode()
            self.rs.store.put(self.rs.k(self.run_id, p.SAMPLES), raw)
            self.dirty = False
