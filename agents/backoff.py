"""Retry delays: exponential backoff with full jitter, and jittered intervals.

After the n-th consecutive failure (n = 1, 2, ...) the delay is drawn uniformly from
``[initial, min(cap, initial * 2**(n-1))]``: "full jitter" (AWS Architecture Blog, "Exponential
Backoff and Jitter"), with a floor of ``initial`` so that a failing device never retries faster
than that. With the defaults (1 s, 300 s) the ceilings run 1, 2, 4, ... 256, 300, 300 s. When a
fleet loses its server at once, the spread keeps it from coming back in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 1.0, cap: float = 300.0, rng: random.Random | None = None):
        self.initial = initial
        self.cap = max(cap, initial)
        self.failures = 0
        self.rng = rng or random.Random()

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        # min() before the power: 2**1000 must not overflow a float.
        return min(self.cap, self.initial * 2 ** min(failures - 1, 64))

    def next_delay(self, retry_after: float | None = None) -> float:
        """Record a failure and return how long to wait; a server's ``Retry-After`` is honoured
        (up to an hour) when it asks for longer."""
        self.failures += 1
        delay = self.rng.uniform(self.initial, self.ceiling(self.failures))
        if retry_after is not None:
            delay = max(delay, min(retry_after, 3600.0))
        return delay

    def reset(self) -> None:
        self.failures = 0


def jittered(interval: float, fraction: float, rng: random.Random | None = None) -> float:
    """``interval`` spread uniformly by +/- ``fraction`` of itself."""
    if fraction <= 0:
        return interval
    return interval * (1.0 + (rng or random).uniform(-fraction, fraction))
