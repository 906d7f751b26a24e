"""The agent's duties: small jobs on their own schedules, each inside its own failure boundary.

As SkyPilot's skylet runs its events (each with its own interval, an exception in one logged and
the others run on), the agent's loop runs heartbeat, log shipping, progress, stop poll,
artifacts, metadata and the spot watch as separate `Duty`s. A store error in one backs off that
duty only: an artifact PUT that keeps failing delays the next artifact attempt, never a log
chunk or a heartbeat, and the log line names the duty that failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from agent.daemon.backoff import Backoff
from agent.protocol.errors import StoreError

log = logging.getLogger("trainctl.agent")
STORE_ERRORS = (StoreError, OSError)  # OSError: connection-level failures, a full workdir volume


class Duty:
    """One job: `fn(now)` every `every_s` (0 = every tick), with a backoff of its own on store errors.

    `fn` returns False when it did nothing this time (no work, or work still in flight): neither
    the schedule nor the backoff moves, so a rate-limited duty (progress) runs as soon as there is
    work, and a backed-off duty counts as recovered only once the store has really answered it
    (an artifact upload collected, not merely resubmitted).
    """

    def __init__(self, name: str, fn: Callable[[float], bool | None], every_s: float = 0.0,
                 retry_max_s: float = 30.0, while_down: str = "retrying with backoff"):
        self.name, self.fn, self.every_s, self.while_down = name, fn, every_s, while_down
        self.backoff = Backoff(max_s=retry_max_s)
        self.next_at = 0.0

    @property
    def down(self) -> bool:
        """The last attempt failed and the duty is backing off."""
        return self.backoff.down

    def due(self, now: float) -> bool:
        return now >= self.next_at and self.backoff.ready(now)

    def run(self, now: float, force: bool = False) -> bool:
        """Run when due (or `force`d); True when it ran without a store error. Store errors end here."""
        if not force and not self.due(now):
            return False
        try:
            did = self.fn(now)
        except STORE_ERRORS as exc:
            delay = self.backoff.failed(now, str(exc))
            if self.backoff.failures == 1:
                log.warning("%s: store unreachable, %s (next try in %.1fs; the other duties go on): %s",
                            self.name, self.while_down, delay, exc)
            else:
                log.debug("%s: still failing (next try in %.1fs): %s", self.name, delay, exc)
            return False
        if did is False:
            return True
        if self.backoff.down:
            log.info("%s: store reachable again after %d failed attempt(s)", self.name, self.backoff.failures)
            self.backoff.succeeded()
        if self.every_s:
            self.next_at = now + self.every_s
        return True


class Duties:
    """The agent's duties in the order they run each tick (metadata before the first heartbeat...)."""

    def __init__(self, duties: Iterable[Duty]):
        self._by_name = {d.name: d for d in duties}

    def __getitem__(self, name: str) -> Duty:
        return self._by_name[name]

    def run(self, now: float) -> None:
        """One tick: every due duty, each failing (and backing off) on its own."""
        for duty in self._by_name.values():
            duty.run(now)

    @property
    def any_down(self) -> bool:
        """Some duty is backing off: poll on the tick instead of sleeping until a file changes."""
        return any(d.down for d in self._by_name.values())

    def down(self) -> list[str]:
        """Names of the duties now backing off."""
        return [d.name for d in self._by_name.values() if d.down]
