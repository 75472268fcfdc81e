"""Read side of telemetry, shared by the REST API and the dashboard.

Series are columnar (one list of timestamps, one list per metric), the shape chart libraries
want, and a range is served from the table that fits it: raw samples, 1-minute or 1-hour rollups.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Avg, Count, Max, Min, Sum

from fleet.models import (
    METRICS,
    Alert,
    AlertState,
    Device,
    DevicePresence,
    DeviceStatus,
    Rollup1h,
    Rollup1m,
    TelemetrySample,
)

from .presence import presence_counts

RESOLUTIONS = ("raw", "1m", "1h")
MAX_POINTS = 20_000
SUMMARY_WINDOW_S = 300


class QueryError(ValueError):
    """A request for a series that cannot be answered as asked (400)."""


def pick_resolution(since: datetime, until: datetime) -> str:
    """The finest resolution that keeps a chart under a few thousand points:
    up to 3 hours raw, up to 3 days by minute, beyond by hour."""
    span = (until - since).total_seconds()
    if span <= 3 * 3600:
        return "raw"
    if span <= 3 * 86400:
        return "1m"
    return "1h"


@dataclass
class Series:
    resolution: str
    since: datetime
    until: datetime
    t: list[float]
    series: dict
    count: list[int] | None = None

    def as_dict(self) -> dict:
        body = {
            "resolution": self.resolution,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "t": self.t,
            "series": self.series,
        }
        if self.count is not None:
            body["count"] = self.count
        return body


def telemetry_series(
    device_id,
    since: datetime,
    until: datetime,
    resolution: str | None = None,
    metrics: list[str] | None = None,
) -> Series:
    """One device's metrics over [since, until): raw values, or min/avg/max per bucket."""
    if until <= since:
        raise QueryError("until must be after since")
    resolution = resolution or pick_resolution(since, until)
    if resolution not in RESOLUTIONS:
        raise QueryError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    metrics = list(metrics or METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise QueryError(f"unknown metric(s): {', '.join(unknown)}; known: {', '.join(METRICS)}")
    if resolution == "raw":
        qs = TelemetrySample.objects.filter(device_id=device_id, ts__gte=since, ts__lt=until)
        rows = list(qs.order_by("ts").values_list("ts", *metrics)[: MAX_POINTS + 1])
        _check_size(rows)
        return Series(
            resolution, since, until, [r[0].timestamp() for r in rows],
            {m: [r[i + 1] for r in rows] for i, m in enumerate(metrics)},
        )
    model = Rollup1m if resolution == "1m" else Rollup1h
    step = timedelta(minutes=1) if resolution == "1m" else timedelta(hours=1)
    columns = [f"{m}_{agg}" for m in metrics for agg in ("min", "avg", "max")]
    qs = model.objects.filter(device_id=device_id, bucket__gt=since - step, bucket__lt=until)
    rows = list(qs.order_by("bucket").values_list("bucket", "count", *columns)[: MAX_POINTS + 1])
    _check_size(rows)
    series = {}
    for i, m in enumerate(metrics):
        base = 2 + 3 * i
        series[m] = {agg: [r[base + j] for r in rows] for j, agg in enumerate(("min", "avg", "max"))}
    return Series(resolution, since, until, [r[0].timestamp() for r in rows], series,
                  [r[1] for r in rows])


def _check_size(rows: list) -> None:
    if len(rows) > MAX_POINTS:
        raise QueryError(
            f"more than {MAX_POINTS} points in this range; ask for a coarser resolution "
            "(1m or 1h) or a shorter range"
        )


def fleet_summary(now: datetime, window_s: int = SUMMARY_WINDOW_S) -> dict:
    """Counts by status and presence, open alerts, and the fleet's metrics over the last
    ``window_s`` seconds (mean, min and max across the devices that reported)."""
    by_status = {s.value: 0 for s in DeviceStatus}
    for row in Device.objects.values("status").annotate(n=Count("id")).order_by():
        by_status[row["status"]] = row["n"]
    alerts = dict.fromkeys((AlertState.PENDING, AlertState.FIRING), 0)
    for row in (Alert.objects.filter(state__in=list(alerts)).values("state")
                .annotate(n=Count("id")).order_by()):
        alerts[row["state"]] = row["n"]
    since = now - timedelta(seconds=window_s)
    aggregates: dict = {"samples": Count("seq"), "devices": Count("device_id", distinct=True)}
    for m in METRICS:
        aggregates[f"{m}__avg"] = Avg(m)
        aggregates[f"{m}__min"] = Min(m)
        aggregates[f"{m}__max"] = Max(m)
    agg = TelemetrySample.objects.filter(ts__gte=since, ts__lte=now).aggregate(**aggregates)
    metrics = {
        m: {"avg": agg[f"{m}__avg"], "min": agg[f"{m}__min"], "max": agg[f"{m}__max"]}
        for m in METRICS
    }
    dropped = DevicePresence.objects.aggregate(n=Sum("dropped_samples"))["n"] or 0
    return {
        "at": now.isoformat(),
        "devices": {"total": sum(by_status.values()), "by_status": by_status},
        "presence": presence_counts(),
        "alerts": {"pending": alerts[AlertState.PENDING], "firing": alerts[AlertState.FIRING]},
        "telemetry": {
            "window_s": window_s,
            "reporting_devices": agg["devices"],
            "samples": agg["samples"],
            "dropped_samples_total": dropped,
            "metrics": metrics,
        },
    }
