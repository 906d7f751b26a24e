"""Warnings: what a run shows before it dies, judged from its own records (pure, no I/O).

Distinct from incidents (hung, failed): a warning never changes the run's state; it says the run is
heading for trouble while there is still time to act. Each rule reads what the agent stores
(samples.json, history.json) and the run's config (metadata), and holds only while its condition
does, so a warning clears by itself when the condition ends:

- memory: host RAM in use above `ram_share` of the total, or swap in use grown by more than
  `swap_growth_mb` over the last `window_s` (the box is paging: the OOM killer is next);
- gpu_idle: mean GPU utilisation under `gpu_util_min` % over the last `window_s` while training;
- disk: the data volume's free space under `box.min_free_gb` (the run's config; `min_free_gb` else);
- no_learning: after the first `no_learning_steps` logged steps the loss is not lower than at the
  start; or the latest loss is `spike_k` x the running median of the ones before (a loss spike);
- overfitting: the eval loss rose `overfit_evals` evaluations in a row.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

GIB = 1024 ** 3
KINDS = ("memory", "gpu_idle", "disk", "no_learning", "overfitting")


@dataclass(frozen=True)
class WarningSettings:
    """Every warning threshold (the watcher's settings, `Settings.warnings`)."""

    ram_share: float = 0.90
    swap_growth_mb: float = 256.0
    gpu_util_min: float = 50.0
    window_s: float = 600.0
    min_free_gb: float = 20.0  # when the run's config has no box.min_free_gb
    no_learning_steps: int = 100
    spike_k: float = 5.0
    spike_median_of: int = 50
    overfit_evals: int = 3
    check_s: float = 300.0  # how often a sweep reads samples.json and history.json to judge them (2 GETs)


# The environment variables of each threshold (`ctl watch`, `ctl status`, the Lambda's configuration).
WARNING_ENV = {"TRAINCTL_WARN_RAM_SHARE": "ram_share", "TRAINCTL_WARN_SWAP_GROWTH_MB": "swap_growth_mb",
               "TRAINCTL_WARN_GPU_UTIL_MIN": "gpu_util_min", "TRAINCTL_WARN_WINDOW_S": "window_s",
               "TRAINCTL_WARN_MIN_FREE_GB": "min_free_gb", "TRAINCTL_WARN_NO_LEARNING_STEPS": "no_learning_steps",
               "TRAINCTL_WARN_SPIKE_K": "spike_k", "TRAINCTL_WARN_OVERFIT_EVALS": "overfit_evals",
               "TRAINCTL_WARN_CHECK_S": "check_s"}


def warning_settings_from_env(env) -> WarningSettings:
    """WarningSettings with the TRAINCTL_WARN_* variables of `env` applied; a bad value is a ValueError
    naming the variable."""
    changes = {}
    for var, name in WARNING_ENV.items():
        raw = env.get(var)
        if raw in (None, ""):
            continue
        kind = int if name in ("no_learning_steps", "overfit_evals") else float
        try:
            val = kind(raw)
        except ValueError:
            raise ValueError(f"{var} must be a {kind.__name__}, got {raw!r}") from None
        if val <= 0:
            raise ValueError(f"{var} must be positive, got {raw!r}")
        changes[name] = val
    return dataclasses.replace(WarningSettings(), **changes)


@dataclass(frozen=True)
class RunWarning:
    """One active warning: its kind (one of KINDS) and what it says, in words."""

    kind: str
    text: str


def _nums(xs) -> list[float]:
    return [float(x) for x in xs if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)]


def _window(samples: dict, name: str, window_s: float) -> tuple[list[float], float]:
    """The values of column `name` in the last `window_s` seconds of samples, and the span they cover."""
    ts, vals = samples.get("ts") or [], samples.get(name) or []
    if not ts:
        return [], 0.0
    start = ts[-1] - window_s
    picked = [(t, v) for t, v in zip(ts, vals, strict=False) if t >= start and isinstance(v, int | float)]
    return [v for _, v in picked], (picked[-1][0] - picked[0][0]) if picked else 0.0


def memory(samples: dict, s: WarningSettings) -> RunWarning | None:
    used, total = _nums(samples.get("ram_used_bytes") or []), samples.get("ram_total_bytes")
    if used and isinstance(total, int | float) and total > 0 and used[-1] > s.ram_share * total:
        return RunWarning("memory", f"host RAM {used[-1] / GIB:.1f} of {total / GIB:.1f} GiB in use "
                                    f"({used[-1] / total:.0%}, above {s.ram_share:.0%})")
    swap, _ = _window(samples, "swap_used_bytes", s.window_s)
    if len(swap) >= 2 and swap[-1] - swap[0] > s.swap_growth_mb * 2 ** 20:
        return RunWarning("memory", f"swap grew {(swap[-1] - swap[0]) / 2 ** 20:.0f} MB in "
                                    f"{s.window_s / 60:.0f} min (now {swap[-1] / GIB:.1f} GiB): the box is paging")
    return None


def gpu_idle(samples: dict, s: WarningSettings, training: bool) -> RunWarning | None:
    util, span = _window(samples, "gpu_util_percent", s.window_s)
    interval = samples.get("interval_s") or 0
    if not training or len(util) < 2 or span + interval < s.window_s:
        return None  # not training, no GPU figures, or not a whole window of them yet
    mean = statistics.fmean(util)
    if mean < s.gpu_util_min:
        return RunWarning("gpu_idle", f"GPU utilisation {mean:.0f}% on average over the last "
                                      f"{s.window_s / 60:.0f} min (under {s.gpu_util_min:.0f}%)")
    return None


def disk(samples: dict, min_free_gb: float) -> RunWarning | None:
    free = _nums(samples.get("disk_free_bytes") or [])
    if free and free[-1] < min_free_gb * GIB:
        return RunWarning("disk", f"data volume {free[-1] / GIB:.1f} GiB free (under box.min_free_gb "
                                  f"{min_free_gb:g} GiB): checkpoints will fail to save")
    return None


def no_learning(history: list[dict], s: WarningSettings) -> RunWarning | None:
    pts = [(h.get("step"), h["loss"]) for h in history if _nums([h.get("loss")])]
    if len(pts) >= 2:
        prev = [v for _, v in pts[-1 - s.spike_median_of:-1]]
        med = statistics.median(prev)
        if med > 0 and pts[-1][1] > s.spike_k * med:
            return RunWarning("no_learning", f"loss spike: {pts[-1][1]:.4g} at step {pts[-1][0]}, "
                                             f"{pts[-1][1] / med:.1f}x the running median {med:.4g}")
    if len(pts) > s.no_learning_steps and pts[-1][1] >= pts[0][1]:
        return RunWarning("no_learning", f"loss not falling: {pts[-1][1]:.4g} at step {pts[-1][0]}, after "
                                         f"{len(pts) - 1} logged steps, vs {pts[0][1]:.4g} at the start")
    return None


def overfitting(history: list[dict], s: WarningSettings) -> RunWarning | None:
    evals = _nums([h.get("eval_loss") for h in history if "eval_loss" in h])
    tail = evals[-(s.overfit_evals + 1):]
    if len(tail) == s.overfit_evals + 1 and all(b > a for a, b in zip(tail, tail[1:], strict=False)):
        return RunWarning("overfitting", f"eval loss rose {s.overfit_evals} evaluations in a row: "
                                         + " -> ".join(f"{x:.4g}" for x in tail))
    return None


def min_free_gb_of(config: dict, s: WarningSettings) -> float:
    """`box.min_free_gb` of the run's resolved config, else the setting."""
    v = (config.get("box") or {}).get("min_free_gb") if isinstance(config, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else s.min_free_gb


def assess_warnings(samples: dict | None, history: list[dict], config: dict, training: bool,
                    s: WarningSettings = WarningSettings()) -> list[RunWarning]:
    """Every warning whose condition holds now, in KINDS order (none for a run that is not running)."""
    samples = samples or {}
    found = [memory(samples, s), gpu_idle(samples, s, training), disk(samples, min_free_gb_of(config, s)),
             no_learning(history, s), overfitting(history, s)]
    return [w for w in found if w is not None]
