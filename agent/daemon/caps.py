"""Runtime and spend caps: a run that loops or crawls is stopped, not left to bill for days.

`[trainer] max_runtime` / `max_cost` in run.toml (`--max-runtime` / `--max-cost` on the agent)
bound one run. The cost is the controller's hourly price (`--hourly-usd`) times the agent's
runtime, billed as finalize prices the marker (60 s minimum), so the figure the cap trips on is
the figure the marker carries. At the cap the agent stops the trainer the way a user stop does
(SIGINT first: our trainer checkpoints on it) and records which cap fired in its state, so a
restarted agent still writes the cap's cause; finalize turns it into `_error` with cause
`runtime_cap` / `cost_cap` and the figure reached.
"""

from __future__ import annotations

import logging
import re
import time

from agent.protocol.durations import fmt_duration

log = logging.getLogger("trainctl.agent")
_CKPT_RE = re.compile(r"checkpoint-(\d+)\Z")
MIN_BILLED_S = 60.0  # as agent.daemon.finalize and ops.pricing: EC2 Linux bills a 60 s minimum


def cost_usd(hourly_usd: float, runtime_s: float) -> float:
    """What `runtime_s` on a box at `hourly_usd` costs, billed per second with a 60 s minimum."""
    return hourly_usd * max(MIN_BILLED_S, runtime_s) / 3600.0


def budget(settings, started_ts: float | None) -> dict | None:
    """The caps this run runs under, for metadata.json (`ctl status` shows what is left); None without caps."""
    if settings.max_runtime_s is None and settings.max_cost_usd is None:
        return None
    return {"max_runtime_s": settings.max_runtime_s, "max_cost_usd": settings.max_cost_usd,
            "hourly_usd": settings.hourly_usd, "started_ts": started_ts}


def reached(settings, runtime_s: float) -> dict | None:
    """Which cap `runtime_s` has reached, as {cause, summary, ...}, or None while within both."""
    if settings.max_runtime_s is not None and runtime_s >= settings.max_runtime_s:
        return {"cause": "runtime_cap", "runtime_s": round(runtime_s, 3), "limit": settings.max_runtime_s,
                "summary": f"runtime cap reached: ran {fmt_duration(runtime_s, fine=True)} "
                           f"(max_runtime {fmt_duration(settings.max_runtime_s, fine=True)})"}
    if settings.max_cost_usd is not None and settings.hourly_usd is not None:
        usd = cost_usd(settings.hourly_usd, runtime_s)
        if usd >= settings.max_cost_usd:
            return {"cause": "cost_cap", "cost_usd": round(usd, 4), "limit": settings.max_cost_usd,
                    "summary": f"cost cap reached: ${usd:.2f} after {fmt_duration(runtime_s, fine=True)} at "
                               f"${settings.hourly_usd:g}/h (max_cost ${settings.max_cost_usd:g})"}
    return None


class CapWatch:
    """The agent's duty: once a cap is reached, record it and stop the trainer gracefully."""

    def __init__(self, agent):
        self.agent = agent

    def tick(self, _now: float) -> bool:
        """Check the caps; at one, save why in the agent's state and start the stop ladder."""
        a = self.agent
        if a.state.cap is not None or a.ladder.stopping or a.state.started_ts is None:
            return False
        hit = reached(a.s, time.time() - a.state.started_ts)
        if hit is None:
            return False
        a.state.cap = hit
        log.warning("%s: stopping the trainer gracefully (it checkpoints first)", hit["summary"])
        a.ladder.begin(time.monotonic())  # saves the state (with the cap) before the first signal
        return True


def stored_checkpoint(agent) -> tuple[str, str | None]:
    """(a note for the summary, the store URI) of the newest checkpoint stored this run (the one the
    trainer saved on the way out, which the run continues from); the URI is None when none was."""
    steps = [(int(m.group(1)), name) for name in agent.artifacts.uploaded if (m := _CKPT_RE.match(name))]
    if not steps:
        return "no checkpoint was stored", None
    step, name = max(steps)
    uri = agent.artifacts.uploaded[name].uri
    return f"{name} (step {step}) is in the store at {uri}", uri
