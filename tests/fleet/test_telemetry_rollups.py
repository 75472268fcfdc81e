"""Rollups equal the raw data they summarise; retention expires what is old and nothing else."""

from __future__ import annotations

import random
import statistics
from datetime import timedelta

import pytest
from django.db import connection

from fleet.models import Rollup1h, Rollup1m, RollupDirty, TelemetrySample
from fleet.telemetry import partitions, retention, rollups

from .telemetry_helpers import at, sample, store

pytestmark = pytest.mark.django_db
NOW = at("2026-12-01 12:00:00")


def _fill(device_id, start, minutes: int, every_s: int = 10, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    samples = []
    for i in range(minutes * 60 // every_s):
        temp = None if i % 7 == 0 else round(rng.uniform(30, 80), 2)  # optional metric, sometimes absent
        samples.append(sample(i + 1, (start + timedelta(seconds=i * every_s)).timestamp(),
                              cpu_percent=round(rng.uniform(0, 100), 2), temperature_c=temp,
                              mem_used_bytes=rng.randint(1, 4_000_000_000)))
    store(device_id, samples, now=(start + timedelta(minutes=minutes)).timestamp())
    return samples


def _expected(samples, bucket_s: int) -> dict:
    groups: dict = {}
    for s in samples:
        groups.setdefault(int(s["ts"] // bucket_s) * bucket_s, []).append(s)
    return groups


def _check(row, group, metric):
    values = [s[metric] for s in group if s.get(metric) is not None]
    assert getattr(row, f"{metric}_min") == pytest.approx(min(values))
    assert getattr(row, f"{metric}_max") == pytest.approx(max(values))
    assert getattr(row, f"{metric}_avg") == pytest.approx(statistics.fmean(values), rel=1e-9)


def test_rollups_equal_the_raw_samples(active_device):
    device_id, _ = active_device
    start = NOW - timedelta(hours=2, minutes=30)
    samples = _fill(device_id, start, minutes=150)
    rollups.rollup_range(start, NOW)

    minutes = {r.bucket.timestamp(): r for r in Rollup1m.objects.filter(device_id=device_id)}
    expected = _expected(samples, 60)
    assert set(minutes) == set(expected)
    for bucket, group in expected.items():
        row = minutes[bucket]
        assert row.count == len(group)
        assert row.temperature_c_count == sum(1 for s in group if s["temperature_c"] is not None)
        for metric in ("cpu_percent", "temperature_c", "mem_used_bytes"):
            _check(row, group, metric)

    hours = {r.bucket.timestamp(): r for r in Rollup1h.objects.filter(device_id=device_id)}
    expected = _expected(samples, 3600)
    assert set(hours) == set(expected)
    for bucket, group in expected.items():
        assert hours[bucket].count == len(group)
        for metric in ("cpu_percent", "temperature_c", "mem_used_bytes"):
            _check(hours[bucket], group, metric)


def test_recomputing_is_idempotent(active_device):
    device_id, _ = active_device
    _fill(device_id, NOW - timedelta(minutes=10), minutes=10)
    rollups.run_rollups(NOW)
    first = list(Rollup1m.objects.order_by("bucket").values_list("bucket", "count", "cpu_percent_avg"))
    rollups.run_rollups(NOW)
    assert list(Rollup1m.objects.order_by("bucket").values_list("bucket", "count", "cpu_percent_avg")) == first
    assert Rollup1h.objects.count() == 1


def test_a_late_replay_is_folded_into_old_rollups(active_device):
    device_id, _ = active_device
    old = NOW - timedelta(hours=5)
    store(device_id, [sample(1, old.timestamp(), cpu_percent=10.0)], now=old.timestamp() + 5)
    rollups.run_rollups(old + timedelta(seconds=30))
    assert Rollup1m.objects.get(device_id=device_id).count == 1
    # Hours later the agent's backlog arrives, with samples of that same minute.
    store(device_id, [sample(2, old.timestamp() + 20, cpu_percent=30.0)], now=NOW.timestamp())
    assert RollupDirty.objects.count() == 1
    rollups.run_rollups(NOW)
    row = Rollup1m.objects.get(device_id=device_id)
    assert (row.count, row.cpu_percent_avg, row.cpu_percent_max) == (2, 20.0, 30.0)
    assert Rollup1h.objects.get(device_id=device_id).count == 2
    assert RollupDirty.objects.count() == 0


def test_retention_removes_old_raw_and_rollups_only(active_device, settings):
    device_id, _ = active_device
    settings.EDGEFLEET_TELEMETRY = {**settings.EDGEFLEET_TELEMETRY, "RAW_RETENTION_DAYS": 3,
                                    "ROLLUP_1M_RETENTION_DAYS": 5, "DELETE_BATCH": 7}
    partitions.ensure_partitions(NOW, days_ahead=1, days_back=8)
    for days_ago in (6, 4, 2, 0):  # oldest first, so seqs rise
        t = NOW - timedelta(days=days_ago)
        store(device_id, [sample(100 - days_ago * 10 + i, t.timestamp() + i) for i in range(10)],
              now=t.timestamp() + 60)
        rollups.rollup_range(t, t + timedelta(minutes=1))
    assert TelemetrySample.objects.count() == 40

    result = retention.apply_retention(NOW)

    def days_ago(when):
        return round((NOW - when).total_seconds() / 86400)

    assert sorted({days_ago(s.ts) for s in TelemetrySample.objects.all()}) == [0, 2]
    assert sorted({days_ago(r.bucket) for r in Rollup1m.objects.all()}) == [0, 2, 4]
    assert Rollup1h.objects.count() == 4  # 400 days by default
    if connection.vendor == "postgresql":
        # Whole days went by DROP TABLE, not row by row.
        assert any(name.endswith((NOW - timedelta(days=6)).strftime("%Y%m%d"))
                   for name in result["partitions_dropped"])
    else:
        assert result["raw_deleted"] == 20
