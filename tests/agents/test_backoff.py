"""Retry delays: exponential, capped, full jitter, never below the initial delay."""

from __future__ import annotations

import random

from agents.backoff import Backoff, jittered


def test_delays_stay_within_the_doubling_ceiling_and_the_cap():
    backoff = Backoff(initial=1.0, cap=300.0, rng=random.Random(7))
    for n in range(1, 40):
        delay = backoff.next_delay()
        ceiling = min(300.0, 2.0 ** (n - 1))
        assert 1.0 <= delay <= ceiling, (n, delay)
    assert backoff.ceiling(9) == 256.0
    assert backoff.ceiling(10) == 300.0
    assert backoff.ceiling(10_000) == 300.0  # no overflow after days of failures


def test_full_jitter_spreads_a_fleet():
    delays = []
    for seed in range(200):
        backoff = Backoff(1.0, 300.0, rng=random.Random(seed))
        for _ in range(8):
            delay = backoff.next_delay()
        delays.append(delay)
    # The 8th retry of 200 devices lands anywhere in [1, 128] s, not in lockstep.
    assert min(delays) < 30 and max(delays) > 100
    assert len({round(d, 3) for d in delays}) > 190


def test_reset_starts_over_and_retry_after_is_honoured():
    backoff = Backoff(1.0, 300.0, rng=random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay(retry_after=120) >= 120
    assert backoff.next_delay(retry_after=10**9) <= 3600  # a server cannot park us for ever


def test_jittered_interval_bounds():
    rng = random.Random(3)
    values = [jittered(10.0, 0.1, rng) for _ in range(1000)]
    assert all(9.0 <= v <= 11.0 for v in values)
    assert jittered(10.0, 0.0) == 10.0
