"""How an agent takes charge of its run: the workdir claimed, the trainer started or adopted.

Three things happen once, before the loop (agent.daemon.loop) starts ticking:

- `claim_workdir`: one agent per workdir, by an flock held for the agent's life, and its pid file;
- `start_or_adopt`: a fresh run saves its state first (a crash right after must not start a second
  trainer), then starts the trainer; a restarted agent finds the trainer a previous one started
  (by the wrapper's pid and create time in agent_state.json), or the exit status it left;
- `lower_priority`: the agent yields the CPU to the trainer from then on.

`trainer_env` is the environment every trainer start gets (the first, and an OOM restart's).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import IO

from agent.daemon import hostfacts
from agent.daemon.logship import LogShipper
from agent.daemon.trainer import ExitStatus, Trainer, read_exit_status
from agent.daemon.workdir import AgentState, Workdir
from agent.protocol.atomic import write_atomic
from agent.protocol.attempts import next_log_seq
from agent.protocol.errors import ConfigError
from agent.protocol.redact import redact_argv

log = logging.getLogger("trainctl.agent")


def claim_workdir(wd: Workdir, run_id: str) -> IO[bytes]:
    """One agent per workdir: an exclusive flock held for the agent's life (the kernel drops it
    when the agent dies, even by SIGKILL), so two agents started at once cannot both run. Returns
    the locked file, to be held open until the agent exits; writes the agent's pid file."""
    lock = open(wd.lock, "a+b")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        other = wd.read_pid(wd.agent_pid)
        who = f"an agent (pid {other})" if other else "another agent"
        raise ConfigError(f"{who} is already running run {run_id} in {wd.root};"
                          " stop it first or use another --workdir") from None
    write_atomic(wd.agent_pid, f"{os.getpid()}\n")
    return lock


def trainer_env(run_id: str, wd: Workdir) -> dict[str, str]:
    """The trainer's environment: the agent's, plus the progress-file contract's variables."""
    env = dict(os.environ)
    env.update(TRAINCTL_RUN_ID=run_id, TRAINCTL_PROGRESS_FILE=str(wd.progress),
               TRAINCTL_OUTPUT_DIR=str(wd.output), TRAINCTL_WORKDIR=str(wd.root))
    env.setdefault("PYTHONUNBUFFERED", "1")  # so print() lines reach the spool (and the store) promptly
    return env


def start_or_adopt(agent) -> ExitStatus | None:
    """Start `agent`'s trainer, or find the one a previous agent started; sets the agent's state,
    shipper and trainer. Returns the trainer's exit status if it already ended (else None)."""
    a = agent
    state = AgentState.load(a.wd.state)
    if state is not None and state.run_id != a.run_id:
        raise ConfigError(f"{a.wd.root} belongs to run {state.run_id}, not {a.run_id}: use another --workdir")
    if state is None:
        if not a.command:
            raise ConfigError("no trainer command: put it after `--`, e.g. ctl agent run ... -- python train.py")
        state = AgentState(run_id=a.run_id, command=redact_argv(a.command), started_ts=time.time(),
                           oom_kill_base=hostfacts.oom_kill_count())
        state.log.next_seq = next_log_seq(a.rs, a.run_id)  # a resumed run appends to its log
        state.save(a.wd.state)  # before the trainer starts: a crash now must not start a second one
        a.trainer = Trainer.start(a.wd, a.command, trainer_env(a.run_id, a.wd))
        state.wrapper_pid, state.wrapper_create_time = a.trainer.pgid, a.trainer.create_time()
        state.save(a.wd.state)
        log.info("started trainer (group %s): %s", a.trainer.pgid, " ".join(state.command))
    a.state = state
    a.shipper = LogShipper(a.rs, a.run_id, a.wd, state.log, a.save_state, a.s.log_flush_s, a.s.latest_s,
                           a.s.partial_line_s)
    a.progress.read_new(live=False)
    a.output.catch_up()
    if a.trainer is None:
        a.trainer = Trainer.adopt(a.wd, state.wrapper_pid, state.wrapper_create_time)
        if a.trainer is None:
            st = read_exit_status(a.wd) or ExitStatus(None, None, lost=True)
            log.warning("trainer of run %s ended while the agent was down: %s", a.run_id, st)
            return st
        log.info("resumed: trainer group %s still running, shipping from byte %d", a.trainer.pgid, state.log.offset)
    return None


def lower_priority(nice: int) -> None:
    """Yield the CPU to the trainer (it was started before this, at normal priority). Threads
    started from here on (file watch, uploads) inherit the lower priority."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError as exc:
            log.debug("could not lower the agent's priority: %s", exc)
