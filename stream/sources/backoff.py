"""Exponential reconnect delays with jitter, and a log throttle for cameras that stay down."""

from __future__ import annotations

import random
import time


class Backoff:
    """Delays of initial_s * 2**n, capped at max_s, each drawn uniformly from its upper half.

    The jitter ("equal jitter") keeps cameras that failed together, for example behind one
    switch that rebooted, from reconnecting in lockstep.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None):
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2**self.failures)
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


class Reminder:
    """Lets a repeated message through once, then again only every `interval_s` seconds."""

    def __init__(self, interval_s: float, clock=time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._last_at: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last_at is None or now - self._last_at >= self.interval_s:
            self._last_at = now
            return True
        return False

    def reset(self) -> None:
        self._last_at = None
