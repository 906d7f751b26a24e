"""The on-box agent: wraps one trainer run and keeps the run store up to date until a marker is written.

One loop, no threads of our own (watchdog's observer only wakes it; artifact uploads run on a
worker): the trainer writes to the spool file and never waits for the agent. Each tick runs the
agent's duties (agent.daemon.duties: metadata, log shipping, heartbeat and the deadline beat,
progress, stop poll, artifacts, checkpoints or saves, spot watch, sampling, caps), each on its own schedule
and with its own backoff, so one that cannot reach the store never holds up the others. On exit the
agent writes exactly one terminal marker (agent.daemon.finalize). Everything it needs to carry on
after a crash is in the workdir (see agent.daemon.workdir).

Taking charge of the run (the workdir's lock, starting or adopting the trainer) is
agent.daemon.startup; what a heartbeat holds and when one is written, agent.daemon.heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from agent.daemon import hostfacts
from agent.daemon.artifacts import ArtifactQueue
from agent.daemon.caps import CapWatch, budget
from agent.daemon.checkpoints import CheckpointWatch
from agent.daemon.duties import Duties, Duty
from agent.daemon.filewatch import FileWatch
from agent.daemon.heartbeat import Heartbeats
from agent.daemon.logship import LogShipper
from agent.daemon.oomretry import OomRetry
from agent.daemon.outputparse import compile_progress_regex
from agent.daemon.outputprogress import OutputProgress
from agent.daemon.progress import ProgressTracker
from agent.daemon.sampling import Sampler
from agent.daemon.saves import SaveWatch, trainer_cwd
from agent.daemon.settings import AgentSettings
from agent.daemon.spot import SpotWatch
from agent.daemon.startup import claim_workdir, lower_priority, start_or_adopt, trainer_env
from agent.daemon.stopping import StopLadder
from agent.daemon.trainer import ExitStatus, Trainer
from agent.daemon.workdir import AgentState, Workdir
from agent.protocol import records as p
from agent.protocol.errors import ConfigError
from agent.protocol.runstore import RunStore
from agent.protocol.store import Store

log = logging.getLogger("trainctl.agent")


class Agent:
    """One run's agent. `run()` returns the process exit code (0 once a marker is in the store)."""

    def __init__(self, run_id: str, store: Store, wd: Workdir, command: list[str], settings: AgentSettings,
                 stats=None):
        self.run_id, self.wd, self.command, self.s, self.stats = run_id, wd, command, settings, stats
        self.rs = RunStore(store)
        self.wake = threading.Event()
        self.progress = ProgressTracker(wd.progress)
        rx = compile_progress_regex(settings.progress_regex) if settings.progress_regex else None
        self.output = OutputProgress(wd.log, self.progress, rx, enabled=settings.read_output)
        self.ckpts = CheckpointWatch(self.output_path(settings.checkpoints), self.progress,
                                     settings.checkpoint_settle_s) if settings.checkpoints else None
        # No checkpoints folder set: the saves still set the phase (a long save is not a hang), uploading nothing.
        self.saves = None if self.ckpts else SaveWatch(self._save_roots, self.progress, settings.checkpoint_settle_s)
        self.trainer: Trainer | None = None
        self.trainer_alive = True  # what heartbeats say; False from the trainer's end on
        self.state: AgentState | None = None
        self.shipper: LogShipper | None = None
        self._signal: str | None = None
        self.ladder = StopLadder(lambda sig: self.trainer.send(sig), self.save_state, settings.stop_grace_s,
                                 settings.kill_grace_s)
        self._metadata_dirty = True
        self._md_trainer_pid: int | None = None
        self._history_at = 0.0
        self.artifacts = ArtifactQueue(self.rs, run_id, wd.output, self.stored_apart)
        self.spot = SpotWatch.from_settings(settings)
        self.sampler = Sampler(self.rs, run_id, wd.root)
        self.beats = Heartbeats(self)
        self.duties = self._duties()
        self.oom = OomRetry(self)

    def _duties(self) -> Duties:
        """What the agent keeps doing while the trainer runs, in the order of one tick."""
        s, r = self.s, self.s.retry_max_s
        return Duties([
            Duty("metadata", self._update_metadata, retry_max_s=r),
            Duty("log shipping", self._ship_logs, retry_max_s=r, while_down="spooling locally"),
            Duty("heartbeat", lambda now: self.heartbeat(alive=self.trainer_alive), s.heartbeat_s, r),
            Duty("deadline beat", self.beats.deadline_tick, retry_max_s=r),  # the hang deadline just passed
            Duty("progress", self._ship_progress, s.progress_s, r),
            Duty("stop poll", self._poll_stop, s.stop_poll_s, r),
            Duty("checkpoints", self._scan_checkpoints, s.checkpoint_scan_s),
            Duty("saves", lambda now: self.saves and self.saves.scan(time.time()), s.save_scan_s),
            Duty("artifacts", lambda now: self.artifacts.pump(self.progress.declared), retry_max_s=r,
                 while_down="the upload is retried"),
            Duty("spot watch", lambda now: self.spot.tick(self.ladder, now)),
            Duty("sampling", self.sampler.tick, retry_max_s=r),
            Duty("caps", CapWatch(self).tick),
        ])

    # -- startup -------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.wd.create()
        except OSError as exc:
            raise ConfigError(f"cannot use workdir {self.wd.root}: {exc.strerror or exc}; pass --workdir (or set "
                              "TRAINCTL_WORKDIR_ROOT) to a writable folder") from None
        self._lock = claim_workdir(self.wd, self.run_id)  # held open until the agent exits
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            if self._already_finished():
                log.info("run %s already has a terminal marker; nothing to do", self.run_id)
                return 0
            status = start_or_adopt(self)
            lower_priority(self.s.nice)
            self.watch = FileWatch(self.wd.root, [self.wd.log, self.wd.progress], self.wake)
            try:
                if status is None:
                    status = self._loop()
                while (sizes := self.oom.next_sizes(status)) is not None:  # opt-in: --oom-retries
                    self.oom.restart(status, *sizes)
                    status = self._loop()
            finally:
                self.watch.close()
            self.trainer_alive = False
            from agent.daemon.finalize import finalize

            return finalize(self, status)
        finally:
            self.artifacts.close()
            self.wd.agent_pid.unlink(missing_ok=True)

    def _already_finished(self) -> bool:
        # The start-up store probe: a store that cannot work refuses a fresh run; a store down is spooled.
        from agent.daemon.probe import probe_store

        return probe_store(self.rs, self.run_id, fresh=not self.wd.state.exists())

    def _trainer_env(self) -> dict[str, str]:
        return trainer_env(self.run_id, self.wd)  # the OOM restart starts its trainer with it too

    def save_state(self) -> None:
        """Persist the agent's state (cursor, seqs, why it is stopping) to the workdir."""
        self.state.save(self.wd.state)

    def _on_signal(self, signum, _frame) -> None:
        self._signal = signal.Signals(signum).name
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> ExitStatus:
        while True:
            now = time.monotonic()
            status = self.trainer.poll()
            if status is not None:
                return status
            if self._signal and not self.ladder.stopping:
                log.info("agent got %s: stopping the trainer gracefully", self._signal)
                self.state.interrupted = True
                self.ladder.begin(now)
            self.ladder.escalate(now)
            self.progress.read_new()
            self.output.read_new()
            self.duties.run(now)
            if self.shipper.backlog() or self.duties.any_down:
                self.watch.disarm()
                time.sleep(self.s.tick_s)
            else:
                self.watch.arm()
                if self.wake.wait(self.s.tick_s):
                    self.watch.disarm()  # a change: stop the event stream before doing the work
                self.wake.clear()

    # -- the duties (each called inside its own failure boundary, agent.daemon.duties) ---------
    def _update_metadata(self, _now: float) -> bool:
        if self._md_trainer_pid is None and self.trainer.trainer_pid:
            self._metadata_dirty = True  # the wrapper wrote trainer.pid after the first metadata write
        if not (self._metadata_dirty or self.progress.phase_changed):
            return False
        self.write_metadata(self.progress.phase or "running")
        return True

    def _ship_logs(self, now: float) -> None:
        if self.shipper.due(now):
            self.shipper.ship(now)
        self.shipper.refresh_latest(now)

    def _ship_progress(self, now: float) -> bool:
        if not self.progress.changed:
            return False  # nothing new: look again next tick, not after a whole interval
        self.rs.write_progress(self.run_id, self.progress.record(time.time()))
        self.progress.changed = False
        if now >= self._history_at:
            self.rs.write_history(self.run_id, self.progress.history_points())
            self._history_at = now + self.s.history_s
        return True

    def _scan_checkpoints(self, _now: float) -> None:
        if self.ckpts is not None:
            self.ckpts.scan(time.time())

    def _save_roots(self) -> list[Path]:
        return [self.wd.output, trainer_cwd(self.trainer.trainer_pid if self.trainer else None)]

    def _poll_stop(self, now: float) -> None:
        if self.ladder.stopping:
            return
        if self.rs.stop_requested(self.run_id):
            log.info("control/stop found: stopping the trainer")
            self.state.stop_seen = True
            self.ladder.begin(now)

    def output_path(self, path: str) -> Path:
        """A path the run declared: relative to the trainer's output dir, or absolute."""
        return (self.wd.output / Path(path).expanduser()).resolve()

    def stored_apart(self) -> list[Path]:
        """Folders stored as artifacts of their own (checkpoints), so a final artifact holding them
        (the callback's whole output dir) does not upload them twice."""
        out = [self.output_path(d.path) for d in self.progress.declared if not d.final]
        return out + (self.ckpts.folders() if self.ckpts else [])

    def wait_artifacts(self, timeout: float) -> None:
        """Finish declared uploads (heartbeating meanwhile); store errors from uploads propagate to the caller."""
        deadline = time.monotonic() + timeout
        while self.artifacts.done < len(self.progress.declared) and time.monotonic() < deadline:
            self.artifacts.pump(self.progress.declared)
            if self.artifacts.busy:
                self.duties["heartbeat"].run(time.monotonic())
                time.sleep(min(0.2, self.s.tick_s))

    # -- what the agent writes ---------------------------------------------------------------
    def write_metadata(self, phase: str) -> None:
        """metadata.json with the agent's side filled in (pids, workdir, host, version) and `phase`."""
        try:
            md = self.rs.read_metadata(self.run_id)
        except p.RecordError:
            md = None
        md = md or p.Metadata(run_id=self.run_id, created=self.state.started_ts or time.time())
        md.phase, md.agent_pid, md.heartbeat_s, md.workdir = phase, os.getpid(), self.s.heartbeat_s, str(self.wd.root)
        md.trainer_pid = self._md_trainer_pid = self.trainer.trainer_pid if self.trainer else md.trainer_pid
        md.command = md.command or self.state.command
        md.host = md.host or hostfacts.host_stats(self.wd.root).get("hostname")
        md.trainctl_version = md.trainctl_version or _version()
        md.budget = budget(self.s, self.state.started_ts)
        md.oom_attempts = self.state.oom_attempts
        self.rs.write_metadata(md)
        self._metadata_dirty = self.progress.phase_changed = False

    def heartbeat(self, alive: bool, why: str = p.Heartbeat.WHY_INTERVAL) -> None:
        """heartbeat.json now (agent.daemon.heartbeat): the next seq, liveness, progress, host and GPU stats."""
        self.beats.write(alive, why)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainctl")
    except PackageNotFoundError:
        return None
