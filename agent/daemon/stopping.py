"""Stopping the trainer: SIGINT, then SIGTERM after `stop_grace_s`, then SIGKILL after `kill_grace_s`.

The ladder is the one place that knows how far a stop has gone. A user stop (control/stop) or a
signal to the agent starts it at the bottom; the spot watch takes it over (SIGTERM at once, its
own SIGKILL budget), after which the ladder sends nothing more.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("trainctl.agent")


class StopStage(enum.IntEnum):
    """How far the stop of the trainer has gone."""

    RUNNING = 0  # nobody asked the trainer to stop
    SENT_SIGINT = 1  # asked to stop gracefully (save and exit)
    SENT_SIGTERM = 2  # it outstayed stop_grace_s
    FINISHED = 3  # SIGKILL sent, or the spot watch owns the ending: the ladder sends nothing more


class StopLadder:
    """Escalates a stop on the agent's tick; `send` delivers a signal to the trainer's group."""

    def __init__(self, send: Callable[[int], None], save: Callable[[], None], stop_grace_s: float,
                 kill_grace_s: float):
        self._send, self._save = send, save
        self.stop_grace_s, self.kill_grace_s = stop_grace_s, kill_grace_s
        self.stage = StopStage.RUNNING
        self._since = 0.0

    @property
    def stopping(self) -> bool:
        """A stop is under way (by the user, a signal to the agent, or a spot notice)."""
        return self.stage is not StopStage.RUNNING

    def begin(self, now: float) -> None:
        """SIGINT: the trainer saves and exits. The state is saved first: a restarted agent knows why."""
        self._save()
        self._send(signal.SIGINT)
        self.stage, self._since = StopStage.SENT_SIGINT, now

    def escalate(self, now: float) -> None:
        """Called every tick: the next signal once the current one's grace is over."""
        if self.stage is StopStage.SENT_SIGINT and now - self._since >= self.stop_grace_s:
            log.warning("trainer still running %.0fs after SIGINT: sending SIGTERM", self.stop_grace_s)
            self._send(signal.SIGTERM)
            self.stage, self._since = StopStage.SENT_SIGTERM, now
        elif self.stage is StopStage.SENT_SIGTERM and now - self._since >= self.kill_grace_s:
            log.warning("trainer still running %.0fs after SIGTERM: sending SIGKILL", self.kill_grace_s)
            self._send(signal.SIGKILL)
            self.stage = StopStage.FINISHED

    def take_over(self, sig: int) -> None:
        """Someone else (the spot watch) ends the trainer: send `sig` now, and escalate no further."""
        self._save()
        self._send(sig)
        self.stage = StopStage.FINISHED

    def send(self, sig: int) -> None:
        """A signal outside the ladder's own steps (the spot watch's SIGKILL)."""
        self._send(sig)
