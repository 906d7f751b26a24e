"""The agent's own backoff, used only to ride out a long store outage with the local spool.

Single store calls already retry through botocore's standard mode; this decides when the agent
tries the store again after a call still failed, without ever sleeping in the trainer's way.
"""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter, capped at `max_s`, reset by a success."""

    def __init__(self, base_s: float = 0.5, max_s: float = 30.0):
        self.base_s, self.max_s = base_s, max_s
        self.failures = 0
        self.next_try = 0.0
        self.last_error: str | None = None

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def failed(self, now: float, error: str) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.failures += 1
        cap = min(self.max_s, self.base_s * 2 ** min(self.failures - 1, 16))
        delay = random.uniform(cap / 2, cap)
        self.next_try = now + delay
        self.last_error = error
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0
        self.last_error = None

    @property
    def down(self) -> bool:
        return self.failures > 0
