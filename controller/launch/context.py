"""What one `ctl launch` carries from step to step (controller.launch.steps), and what it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.protocol.runstore import RunStore
from controller.config import RunConfig
from controller.launch import plan


def say(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Target:
    """Where to launch: an EC2 instance, any SSH host, or this machine."""

    kind: str  # existing | host | local
    value: str = ""


@dataclass
class LaunchResult:
    run_id: str
    status: str  # started | already_running | dry_run
    store_url: str
    host: str
    timings: dict = field(default_factory=dict)
    console_url: str | None = None


@dataclass
class Launch:
    """One launch's state: filled in by the steps in order (resolve, connect, inspect, setup, stage, start)."""

    cfg: RunConfig
    target: Target
    run_id: str
    rs: RunStore
    lay: plan.Layout
    wheel: object = None  # controller.launch.wheel.Wheel when setup builds a venv
    resuming: object = None  # controller.launch.resume.ResumePlan for --resume
    box: object = None  # controller.launch.remote.Box once connected
    info: dict = field(default_factory=dict)  # what EC2 said about the instance (metadata, price)
    prior: object = None  # the run's metadata before this launch, if any
    region: str = ""
    facts: object = None  # controller.launch.facts.Facts
    user: str = ""  # who runs the agent on the box
    other: str | None = None  # the run the box's active-run record names
    other_done: bool = False  # ... which has finished (its agent only lingers)
    env_file: str = ""
    claimed: int | None = None  # the attempt number a resume claimed
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    @property
    def workdir(self) -> str:
        return self.lay.workdir(self.run_id)

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap under `name`."""
        self.timings[name] = max(0.0, round(time.monotonic() - self.t0 - sum(self.timings.values()), 3))

    def result(self, status: str, console_url: str | None = None) -> LaunchResult:
        return LaunchResult(self.run_id, status, self.rs.url, self.box.name, self.timings, console_url)
