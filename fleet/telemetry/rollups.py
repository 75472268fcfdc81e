"""1-minute and 1-hour rollups: min/avg/max/count of every metric per device and bucket.

The aggregation runs inside the database: the ORM builds the ``GROUP BY`` query, and it is wrapped
in ``INSERT ... SELECT ... ON CONFLICT (device_id, bucket) DO UPDATE`` (PostgreSQL and SQLite both
speak it), so recomputing a bucket is an idempotent upsert and no row travels through Python.

What is recomputed on each run (every minute by beat):

- the last ``ROLLUP_LOOKBACK_S`` seconds of every device (samples normally arrive within a report
  period, well inside it), and the hours those minutes fall in;
- every (device, hour) that ingest marked dirty because it stored samples older than
  ``ROLLUP_LATE_AFTER_S`` (a backlog replayed after an outage).

1-hour rollups are computed from the 1-minute ones: min of mins, max of maxes, averages weighted
by each minute's count, so they equal what the raw samples give.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, F, Max, Min, Sum
from django.db.models.functions import NullIf, TruncHour, TruncMinute

from fleet.models import METRICS, Rollup1h, Rollup1m, RollupDirty, TelemetrySample

# Metrics every sample has: their count is the bucket's count.
ALWAYS = {"cpu_percent", "mem_used_bytes", "mem_total_bytes"}
OPTIONAL = [m for m in METRICS if m not in ALWAYS]
ROLLUP_COLUMNS = ["device_id", "bucket", "count"] + [
    f"{m}_{agg}" for m in METRICS for agg in ("min", "avg", "max")
] + [f"{m}_count" for m in OPTIONAL]


def floor_minute(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(second=0, microsecond=0)


def floor_hour(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _upsert(table: str, queryset) -> int:
    """INSERT the rows of an aggregate ``queryset`` (aliased like ROLLUP_COLUMNS) into ``table``,
    replacing the buckets that exist."""
    sql, params = queryset.query.sql_with_params()
    cols = ", ".join(ROLLUP_COLUMNS)
    # Aggregates are aliased r_<column>: the plain names would clash with the model's fields.
    aliases = ", ".join(["device_id"] + [f"r_{c}" for c in ROLLUP_COLUMNS[1:]])
    updates = ", ".join(f"{c} = excluded.{c}" for c in ROLLUP_COLUMNS[2:])
    statement = (
        f"INSERT INTO {table} ({cols}) SELECT {aliases} FROM ({sql}) AS agg WHERE true "
        f"ON CONFLICT (device_id, bucket) DO UPDATE SET {updates}"
    )
    with connection.cursor() as cur:
        cur.execute(statement, params)
        return cur.rowcount


def _minute_aggregates(start: datetime, end: datetime, device_ids=None):
    qs = TelemetrySample.objects.filter(ts__gte=start, ts__lt=end)
    if device_ids is not None:
        qs = qs.filter(device_id__in=list(device_ids))
    aggregates: dict = {"r_count": Count("seq")}
    for m in METRICS:
        aggregates[f"r_{m}_min"] = Min(m)
        aggregates[f"r_{m}_avg"] = Avg(m)
        aggregates[f"r_{m}_max"] = Max(m)
    for m in OPTIONAL:
        aggregates[f"r_{m}_count"] = Count(m)
    return (
        qs.annotate(r_bucket=TruncMinute("ts", tzinfo=UTC))
        .values("device_id", "r_bucket")
        .annotate(**aggregates)
        .order_by()
    )


def _hour_aggregates(start: datetime, end: datetime, device_ids=None):
    qs = Rollup1m.objects.filter(bucket__gte=start, bucket__lt=end)
    if device_ids is not None:
        qs = qs.filter(device_id__in=list(device_ids))
    aggregates: dict = {"r_count": Sum("count")}
    for m in METRICS:
        weight = "count" if m in ALWAYS else f"{m}_count"
        aggregates[f"r_{m}_min"] = Min(f"{m}_min")
        aggregates[f"r_{m}_max"] = Max(f"{m}_max")
        aggregates[f"r_{m}_avg"] = Sum(F(f"{m}_avg") * F(weight)) / NullIf(Sum(weight), 0)
    for m in OPTIONAL:
        aggregates[f"r_{m}_count"] = Sum(f"{m}_count")
    return (
        qs.annotate(r_bucket=TruncHour("bucket", tzinfo=UTC))
        .values("device_id", "r_bucket")
        .annotate(**aggregates)
        .order_by()
    )


def rollup_range(start: datetime, end: datetime, device_ids=None) -> tuple[int, int]:
    """Recompute the 1-minute buckets in [start, end) and the 1-hour buckets they touch.

    ``start`` is rounded down to its minute; hours are recomputed whole. Returns rows upserted
    (1m, 1h)."""
    start = floor_minute(start)
    with transaction.atomic():
        minutes = _upsert(Rollup1m._meta.db_table, _minute_aggregates(start, end, device_ids))
        hour_start = floor_hour(start)
        hour_end = floor_hour(end) + timedelta(hours=1) if end > floor_hour(end) else floor_hour(end)
        hours = _upsert(Rollup1h._meta.db_table, _hour_aggregates(hour_start, hour_end, device_ids))
    return minutes, hours


def run_rollups(now: datetime) -> dict:
    """The beat task's work: the recent window for everyone, then the dirty hours."""
    lookback = settings.EDGEFLEET_TELEMETRY["ROLLUP_LOOKBACK_S"]
    minutes, hours = rollup_range(now - timedelta(seconds=lookback), now)
    dirty = list(RollupDirty.objects.values_list("id", "device_id", "hour")[:5000])
    by_hour: dict[datetime, set] = {}
    for _, device_id, hour in dirty:
        by_hour.setdefault(hour, set()).add(device_id)
    for hour, devices in sorted(by_hour.items()):
        m, h = rollup_range(hour, hour + timedelta(hours=1), devices)
        minutes, hours = minutes + m, hours + h
    if dirty:
        RollupDirty.objects.filter(id__in=[row[0] for row in dirty]).delete()
    return {"rollup_1m_rows": minutes, "rollup_1h_rows": hours, "dirty_hours": len(dirty)}
