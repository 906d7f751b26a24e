"""Facts about the box for heartbeats and for the cause classifier: CPU/RAM, disk, GPUs, OOM kills.

Everything here degrades quietly: a box without `nvidia-smi`, without a readable kernel log or
without cgroup v2 still gets a heartbeat, just with fewer fields.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psutil

_GPU_QUERY = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu"
_DMESG_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")
_OOM_LINE = re.compile(r"Out of memory: Killed process|oom-kill:|Memory cgroup out of memory|oom_reaper", re.I)


def host_stats(workdir: str | os.PathLike) -> dict:
    """CPU, RAM and disk-free of the workdir's volume, cheap enough for every heartbeat."""
    vm = psutil.virtual_memory()
    stats = {
        "hostname": socket.gethostname(),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "load1": os.getloadavg()[0],
        "ram_total_bytes": vm.total,
        "ram_available_bytes": vm.available,
        "ram_percent": vm.percent,
    }
    try:
        du = shutil.disk_usage(workdir)
        stats.update(disk_free_bytes=du.free, disk_total_bytes=du.total)
    except OSError:
        pass
    return stats


def gpu_stats(timeout: float = 5.0) -> list[dict]:
    """Per-GPU utilisation and memory from `nvidia-smi`, or [] when there is no NVIDIA GPU."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, f"--query-gpu={_GPU_QUERY}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return [{"error": "nvidia-smi failed"}]
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            continue
        idx, name, util, used, total, temp = parts
        gpus.append({"index": _num(idx), "name": name, "util_percent": _num(util),
                     "mem_used_mib": _num(used), "mem_total_mib": _num(total), "temp_c": _num(temp)})
    return gpus


def _num(s: str):
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return None


def process_tree_stats(pid: int | None) -> dict:
    """RSS and CPU seconds of a process and its children (the trainer's whole tree)."""
    if not pid:
        return {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    rss = cpu = 0.0
    for p in procs:
        try:
            rss += p.memory_info().rss
            t = p.cpu_times()
            cpu += t.user + t.system
        except psutil.Error:
            continue
    return {"trainer_rss_bytes": int(rss), "trainer_cpu_s": round(cpu, 2), "trainer_procs": len(procs)}


def _cgroup_dir() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def oom_kill_count() -> int | None:
    """The cgroup v2 `oom_kill` counter for the agent's cgroup (the trainer shares it), if readable."""
    d = _cgroup_dir()
    if d is None:
        return None
    try:
        for line in (d / "memory.events").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def kernel_oom_lines(pids: set[int], since: float | None = None, timeout: float = 5.0) -> list[str]:
    """Kernel log lines, from `since` (unix time) on, saying the OOM killer took one of `pids`.

    Empty when the kernel log is unreadable (containers often lack CAP_SYSLOG): the cgroup counter
    is the other witness.
    """
    boot = psutil.boot_time()
    cmds = [["dmesg"], ["journalctl", "-k", "-q", "--no-pager", "-o", "short-unix"]
            + (["--since", f"@{int(since)}"] if since else ["-n", "2000"])]
    for cmd in cmds:
        if not shutil.which(cmd[0]):
            continue
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out:
            return oom_lines_for(out, pids, since, boot if cmd[0] == "dmesg" else None)
    return []


def oom_lines_for(kernel_log: str, pids: set[int], since: float | None, boot: float | None) -> list[str]:
    """The OOM-killer lines of `kernel_log` that name one of `pids` (and, with `boot`, are not older
    than `since`: dmesg stamps are seconds since boot)."""
    hits = []
    for ln in kernel_log.splitlines():
        if not (_OOM_LINE.search(ln) and _mentions_pid(ln, pids)):
            continue
        m = _DMESG_TS.match(ln)
        if since and boot and m and boot + float(m.group(1)) < since - 5:
            continue  # an older OOM kill of a process that had the same pid
        hits.append(ln)
    return hits[-5:]


def _mentions_pid(line: str, pids: set[int]) -> bool:
    found = {int(m) for m in re.findall(r"(?:process|pid=)\s*(\d+)", line)}
    return bool(found & pids) if found else False
