"""Runs under fault: fake-trainer runs under the real agent (tests/trainers/harness.py) against a moto
S3 store, watched by the real sweep in this process with scaled-down settings, posting to the Slack
stand-in. Sweeps are called with the real clock at moments the test chose, after waiting on the
store for the condition (a stale heartbeat, a marker), so what each sweep sees is determined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.e2e.harness import wait_for
from tests.fixtures.moto_server import REGION
from tests.trainers.harness import Agents, trainer_cmd

HEARTBEAT_S = 0.5  # how often the agents beat (tests/trainers/harness.FAST)
# What the watcher expects: a few beats' slack, so a heartbeat is never "late" (which neither alerts nor
# resolves) in the moment between a test seeing it fresh and the sweep reading it.
WATCH_HEARTBEAT_S = 1.5


def last_progress_at(hb) -> float:
    """The latest moment the heartbeat counts as progress: the agent's last progress, or its cadence
    record's last step or phase start (ops/hang.py measures idleness from the latest)."""
    rec = hb.cadence if isinstance(hb.cadence, dict) else {}
    marks = [hb.last_progress_ts, rec.get("last_step_ts"), rec.get("phase_since")]
    return max(float(m) for m in marks if isinstance(m, int | float) and not isinstance(m, bool))


@dataclass
class FaultRun:
    """One run under test: its id, store, workdir, and the watcher sweeping it."""

    run_id: str
    rs: RunStore
    url: str
    endpoint: str
    env: dict
    workdir: Path
    watcher: object = None

    def start(self, agents: Agents, *trainer_args: str):
        return agents.start(self.run_id, self.url, self.workdir, trainer_cmd(*trainer_args), env=self.env,
                            endpoint=self.endpoint)

    def sweep(self):
        """One sweep of the real watcher at the real time."""
        return self.watcher.sweep(time.time())

    def heartbeat(self):
        try:
            return self.rs.read_heartbeat(self.run_id)
        except Exception:  # noqa: BLE001 - not written yet / mid-write: poll again
            return None

    def chunks(self) -> int:
        return len(list(self.rs.list_log_chunks(self.run_id)))

    def wait_silent(self, grace_s: float) -> None:
        """Until the stored heartbeat is older than heartbeat + grace (what agent_silent means)."""
        wait_for(lambda: (hb := self.heartbeat()) and time.time() - hb.ts > WATCH_HEARTBEAT_S + grace_s + 0.2,
                 what="the heartbeat to go stale")

    def wait_stalled(self, timeout_s: float) -> None:
        """Until a fresh heartbeat shows, at its own `ts` (the clock the watcher judges by), no
        progress for longer than `timeout_s`: judged by wall time instead, a heartbeat written
        just before the deadline would still read as not yet hung."""
        wait_for(lambda: (hb := self.heartbeat()) and time.time() - hb.ts < HEARTBEAT_S
                 and hb.ts - last_progress_at(hb) > timeout_s + 0.3, what="progress to stall while the agent beats")

    def wait_fresh(self, agent_pid: int | None = None) -> None:
        """Until a heartbeat younger than one interval (from `agent_pid`, when given) is stored."""
        wait_for(lambda: (hb := self.heartbeat()) and time.time() - hb.ts < HEARTBEAT_S
                 and (agent_pid is None or hb.agent_pid == agent_pid), what="a fresh heartbeat")


def watcher_for(url: str, endpoint: str, slack, *, grace_s: float, progress_timeout_s: float = 120.0,
                ec2_endpoint: str | None = None):
    """The product's watcher (ops.config.build_watcher) with scaled-down settings, posting to `slack`."""
    from ops.config import build_watcher
    from ops.state import Settings

    settings = Settings(heartbeat_s=WATCH_HEARTBEAT_S, grace_s=grace_s, progress_timeout_s=progress_timeout_s,
                        setup_progress_timeout_s=progress_timeout_s, launch_timeout_s=60.0, lease_s=30.0)
    return build_watcher(url, endpoint, settings=settings, webhook_url=slack.webhook_url,
                         ec2=ec2_endpoint is not None, ec2_endpoint_url=ec2_endpoint)


def new_run(server, run_id: str, workdir: Path, slack, **watch) -> FaultRun:
    """A fresh bucket on `server` (moto_server or private_moto) and a watcher over it."""
    bucket = server.new_bucket()
    url = f"s3://{bucket}/training-runs"
    rs = RunStore(S3Store(bucket, "training-runs", endpoint_url=server.endpoint, region=REGION))
    run = FaultRun(run_id, rs, url, server.endpoint, server.env(), workdir)
    run.watcher = watcher_for(url, server.endpoint, slack, **watch)
    return run


def said(slack) -> list[str]:
    """Delivered posts as their headline, without durations (`🟢 Resolved: training hung`)."""
    return [p["body"].get("text", "").splitlines()[0].split(" for ")[0] for p in slack.posts]
