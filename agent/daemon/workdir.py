"""The run's workdir on the box and the agent's persisted state in it.

Layout (default root `/mnt/training/runs`, setting `TRAINCTL_WORKDIR_ROOT`; the names are declared
in agent.protocol.records, WD_*):

    <root>/<run-id>/agent.pid        the agent's pid (agent.lock: its flock, one agent per workdir)
                    trainer.pid      the trainer's pid (written by agent.daemon.wrap)
                    wrapper.pid      pid of agent.daemon.wrap = the trainer's process group id
                    trainer.log      trainer stdout+stderr: the durable spool shipped to the store
                    progress.jsonl   written by the trainer (env TRAINCTL_PROGRESS_FILE)
                    output/          the trainer's outputs (env TRAINCTL_OUTPUT_DIR)
                    exit_status      JSON {exit_code, signal, pid, ts} written when the trainer ends
                    agent_state.json shipping cursor, chunk seq, heartbeat seq, S3 request counts
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.protocol import records as p
from agent.protocol.atomic import write_atomic

WORKDIR_ROOT_ENV = "TRAINCTL_WORKDIR_ROOT"
DEFAULT_WORKDIR_ROOT = "/mnt/training/runs"


def default_workdir(run_id: str) -> Path:
    """Where a run's files live on the box when `--workdir` is not given."""
    return Path(os.environ.get(WORKDIR_ROOT_ENV) or DEFAULT_WORKDIR_ROOT) / run_id


@dataclass(frozen=True)
class Workdir:
    """Paths of one run's workdir."""

    root: Path

    @property
    def agent_pid(self) -> Path:
        return self.root / p.WD_AGENT_PID

    @property
    def lock(self) -> Path:
        return self.root / p.WD_AGENT_LOCK

    @property
    def trainer_pid(self) -> Path:
        return self.root / p.WD_TRAINER_PID

    @property
    def wrapper_pid(self) -> Path:
        return self.root / p.WD_WRAPPER_PID

    @property
    def log(self) -> Path:
        return self.root / p.WD_LOG

    @property
    def progress(self) -> Path:
        return self.root / p.WD_PROGRESS

    @property
    def output(self) -> Path:
        return self.root / p.WD_OUTPUT

    @property
    def exit_status(self) -> Path:
        return self.root / p.WD_EXIT_STATUS

    @property
    def state(self) -> Path:
        return self.root / p.WD_STATE

    def create(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        self.log.touch()

    def read_pid(self, path: Path) -> int | None:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None


@dataclass
class LogCursor:
    """How far the spool has been shipped. `pending` is a chunk announced before its upload, so a
    restarted agent re-sends exactly those bytes under the same number (no loss, no duplicate)."""

    offset: int = 0
    next_seq: int = 1
    pending: dict | None = None  # {"seq", "start", "end"}


@dataclass
class AgentState:
    """Everything a restarted agent needs to carry on where the last one stopped."""

    run_id: str
    command: list = field(default_factory=list)
    started_ts: float | None = None
    wrapper_pid: int | None = None
    wrapper_create_time: float | None = None
    hb_seq: int = 0
    oom_kill_base: int | None = None
    stop_seen: bool = False
    interrupted: bool = False
    cap: dict | None = None  # the cap that stopped the trainer (agent.daemon.caps.reached), if one did
    oom_attempts: list = field(default_factory=list)  # OOM restarts so far (agent.daemon.oomretry)
    log: LogCursor = field(default_factory=LogCursor)
    stats: dict = field(default_factory=dict)  # S3 requests/bytes of the last agent process (agent.protocol.reqstats)

    @classmethod
    def load(cls, path: Path) -> AgentState | None:
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            from agent.protocol.errors import ConfigError

            raise ConfigError(f"{path} is unreadable ({exc}); move it aside to start the run afresh") from None
        d["log"] = LogCursor(**d.get("log", {}))
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=1).encode())
