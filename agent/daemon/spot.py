"""Spot interruption: watch IMDS for the notice, have the trainer checkpoint, and record the run
as interrupted with the step reached and where its checkpoint is in the store.

EC2 gives about two minutes between the notice and the end of the box. On a notice the trainer
gets SIGTERM (it finishes the current step and saves `checkpoint-<step>`), and SIGKILL if it has
not exited within `spot_checkpoint_s`; the agent's normal end of run then uploads the declared
checkpoint, and `interrupted_marker` names the newest complete one. Off EC2 (IMDS unreachable)
the watch is off (`auto` asks IMDS only on EC2), and one that stops answering turns it off
after one quiet log line.
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

from agent.daemon.artifacts import ArtifactError, sync_artifact
from agent.daemon.imds import ImdsClient, ImdsUnreachable, SpotNotice, resolve_endpoint
from agent.daemon.stopping import StopLadder
from agent.protocol import records as p

log = logging.getLogger("trainctl.agent")
CKPT_RE = re.compile(r"checkpoint-(\d+)\Z")
STATE_FILE = p.CHECKPOINT_STATE  # train.sft.checkpoint writes it last, inside the atomic rename


def newest_checkpoint(output_dir: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint in the trainer's output dir."""
    found = []
    for d in output_dir.glob("checkpoint-*") if output_dir.is_dir() else []:
        m = CKPT_RE.match(d.name)
        if m and (d / STATE_FILE).is_file():
            found.append((int(m.group(1)), d))
    return max(found) if found else None


class SpotWatch:
    """Polls IMDS every `poll_s` from the agent's loop; acts once on a notice."""

    def __init__(self, endpoint: str, poll_s: float, budget_s: float, timeout_s: float = 1.0):
        url = resolve_endpoint(endpoint)
        self.client = ImdsClient(url, timeout_s) if url else None
        self.poll_s, self.budget_s = poll_s, budget_s
        self.notice: SpotNotice | None = None
        self._next = 0.0
        self._kill_at: float | None = None
        self._reached = False  # IMDS answered at least once: later failures are blips, not "off EC2"

    @classmethod
    def from_settings(cls, s) -> SpotWatch:
        return cls(s.imds_endpoint, s.imds_poll_s, s.spot_checkpoint_s, s.imds_timeout_s)

    def poll(self, now: float) -> SpotNotice | None:
        """Ask IMDS if it is time; the notice once one is seen."""
        if self.notice or self.client is None or now < self._next:
            return self.notice
        self._next = now + self.poll_s
        try:
            self.notice = self.client.instance_action()
            self._reached = True
        except ImdsUnreachable as exc:
            if not self._reached:
                log.info("%s: spot interruption watch off (not on EC2?)", exc)
                self.client = None
            else:
                log.debug("%s", exc)
        return self.notice

    def tick(self, ladder: StopLadder, now: float) -> None:
        """Called from the agent's loop while the trainer runs (the agent's "spot" duty)."""
        if self.notice is None:
            if self.poll(now) is None:
                return
            log.warning("spot interruption notice (%s): telling the trainer to checkpoint (SIGTERM), "
                        "%.0fs budget", self.notice.describe(), self.budget_s)
            ladder.take_over(signal.SIGTERM)  # the agent's own SIGINT/SIGTERM/SIGKILL steps stay out of the way
            self._kill_at = now + self.budget_s
        elif self._kill_at is not None and now >= self._kill_at:
            log.warning("trainer still running %.0fs after the spot notice: SIGKILL (the newest complete "
                        "checkpoint is uploaded)", self.budget_s)
            ladder.send(signal.SIGKILL)
            self._kill_at = None

    def interrupted_marker(self, agent, status, facts: dict, tail: list[str], common: dict) -> p.ErrorMarker:
        """`_error` cause interrupted, naming the step reached and the verified checkpoint's location.
        Store errors propagate (finalize retries); a checkpoint that will not verify is named as missing."""
        from agent.daemon.finalize import error_marker

        found, where, note = newest_checkpoint(agent.wd.output), None, "no checkpoint was saved"
        if found:
            step, folder = found
            try:
                up = sync_artifact(agent.rs, agent.run_id, agent.wd.output, folder.name, f"{folder.name}/")
                where, note = up.uri, f"{folder.name} (step {step}) is in the store at {up.uri}"
            except ArtifactError as exc:
                note = f"{folder.name} could not be uploaded: {exc}"
        summary = (f"spot interruption ({self.notice.describe()}) at step {common.get('last_step')}; {note}")
        marker = error_marker(status, facts, tail, cause="interrupted", summary=summary, **common)
        marker.checkpoint = where
        marker.remediation = (f"resume it on another box from the checkpoint: ctl launch --existing i-NEW --resume "
                              f"{agent.run_id} (or --host/--local) with the same run.toml")
        return marker
