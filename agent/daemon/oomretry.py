"""Self-healing CUDA OOM: restart the trainer at half the micro-batch, twice the accumulation.

The on-call engineer's 3 a.m. fix, done by the agent when the run opts in (`--oom-retries N`,
run.toml `[trainer] oom_retries`): a trainer that ended with cause `cuda_oom` at a micro-batch
above 1 is started again with the micro-batch halved and gradient accumulation doubled (the
effective batch unchanged), from its newest checkpoint. The new sizes reach it in the documented
environment variables TRAINCTL_MICRO_BATCH / TRAINCTL_GRAD_ACCUM; our trainer reads them and
resumes from its output folder by itself, a user's trainer also gets its own resume flag
(`--resume-arg`), or no retry happens. The current sizes are the ones the trainer reported in its
progress file (`{"micro_batch": 4, "grad_accum": 1}`), else `--micro-batch` / `--grad-accum`.

Each attempt (number, the sizes that failed, the step reached, the sizes tried next) goes into
the agent's state, the store (`oom_attempts.json`) and metadata.json (so the watcher and `ctl
status` see it without another read). The log goes on in the same spool, so the store's log
stays one ordered, lossless stream across attempts.
"""

from __future__ import annotations

import json
import logging
import time

from agent.daemon.duties import STORE_ERRORS
from agent.daemon.trainer import Trainer
from agent.protocol import records as p
from agent.protocol.causes import classify

log = logging.getLogger("trainctl.agent")
MICRO_ENV, ACCUM_ENV = "TRAINCTL_MICRO_BATCH", "TRAINCTL_GRAD_ACCUM"


def reported_sizes(progress_file) -> tuple[int | None, int | None]:
    """The trainer's last reported (micro_batch, grad_accum) in its progress file, else (None, None)."""
    micro = accum = None
    try:
        lines = progress_file.read_bytes().splitlines()
    except OSError:
        return None, None
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("micro_batch"), int):
            micro, accum = rec["micro_batch"], rec.get("grad_accum") if isinstance(rec.get("grad_accum"), int) else 1
    return micro, accum


class OomRetry:
    """Decides, after the trainer ends, whether to start it again at half the micro-batch."""

    def __init__(self, agent):
        self.agent = agent
        self._current: tuple[int, int] | None = None  # the sizes that just failed
        self._since: int | None = None  # spool offset where the latest restart's output begins

    def tail(self, n: int) -> list[str]:
        """The last `n` log lines of the current attempt only: an earlier attempt's OOM must not
        decide how a later one (that failed otherwise) is classified."""
        if self._since is None:
            return self.agent.shipper.tail(n)
        try:
            with open(self.agent.wd.log, "rb") as fh:
                fh.seek(max(self._since, fh.seek(0, 2) - 256 * 1024))
                data = fh.read()
        except OSError:
            return self.agent.shipper.tail(n)
        return data.decode("utf-8", "replace").splitlines()[-n:]

    @property
    def attempts(self) -> list[dict]:
        return self.agent.state.oom_attempts

    def next_sizes(self, status) -> tuple[int, int] | None:
        """(micro_batch, grad_accum) to restart with, or None: no retry (the run ends as it would have)."""
        a, s = self.agent, self.agent.s
        if status.ok or len(self.attempts) >= s.oom_retries or a.ladder.stopping or a.state.cap is not None:
            return None
        if a.spot.notice is not None or not a.command:
            return None
        cause, _, _ = classify(self.tail(200), status.exit_code, status.signal, {})
        if cause != "cuda_oom":
            return None
        micro, accum = reported_sizes(a.wd.progress)
        if micro is None and not s.resume_args:  # a trainer that does not resume by itself needs its flag
            log.warning("cuda_oom: no OOM retry (the trainer reported no batch sizes and no --resume-arg was given)")
            return None
        last = self.attempts[-1] if self.attempts else {}
        micro = micro or last.get("next_micro_batch") or s.micro_batch
        accum = accum or last.get("next_grad_accum") or s.grad_accum
        self._current = (micro, accum)
        if not micro or not accum or micro <= 1:
            log.warning("cuda_oom at micro-batch %s: no OOM retry (%s)", micro,
                        "already 1" if micro == 1 else "the trainer's batch sizes are unknown")
            return None
        return micro // 2, accum * 2

    def restart(self, status, micro: int, accum: int) -> None:
        """Record the failed attempt and start the trainer again with the new sizes (and resume flag)."""
        a = self.agent
        att = self.record(status, micro, accum)
        log.warning("cuda_oom at micro-batch %s (step %s): restarting the trainer at micro-batch %d, grad_accum %d "
                    "(attempt %d of %d)", att["micro_batch"], att["step"], micro, accum, att["attempt"], a.s.oom_retries)
        self._since = a.wd.log.stat().st_size
        a.trainer = Trainer.start(a.wd, [*a.command, *a.s.resume_args], {**a._trainer_env(), **self.env(micro, accum)})
        a.state.wrapper_pid, a.state.wrapper_create_time = a.trainer.pgid, a.trainer.create_time()
        a.save_state()

    def record(self, status, micro: int, accum: int) -> dict:
        """The attempt that just failed, kept in the state, the store and metadata.json."""
        a = self.agent
        # The trainer has exited: read what it wrote last, so the step reached is known however late the
        # loop's last look at the progress file was.
        a.progress.read_new()
        old_micro, old_accum = self._current or (micro * 2, accum // 2)
        att = {"attempt": len(self.attempts) + 1, "ts": time.time(), "cause": "cuda_oom",
               "micro_batch": old_micro, "grad_accum": old_accum, "step": a.progress.last_step,
               "exit_code": status.exit_code, "signal": status.signal,
               "next_micro_batch": micro, "next_grad_accum": accum}
        self.attempts.append(att)
        a.save_state()
        self.publish()
        return att

    def publish(self) -> None:
        """The attempts to the store; a store outage only delays it (metadata repeats them)."""
        a = self.agent
        a._metadata_dirty = True
        try:
            a.rs.store.put_json(a.rs.k(a.run_id, p.OOM_ATTEMPTS), {"run_id": a.run_id, "attempts": self.attempts})
        except STORE_ERRORS as exc:
            log.warning("could not store %s (metadata.json carries the attempts too): %s", p.OOM_ATTEMPTS, exc)

    def env(self, micro: int, accum: int) -> dict[str, str]:
        """The restarted trainer's extra environment: the documented size variables."""
        return {MICRO_ENV: str(micro), ACCUM_ENV: str(accum)}
