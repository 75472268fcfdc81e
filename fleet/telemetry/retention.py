"""Retention of raw samples and rollups.

PostgreSQL: the raw samples and the 1-minute rollups are partitioned by day, so expiring a day is
a ``DROP TABLE`` of its partition; the default partition (rows outside the created days) and the
smaller tables (1-hour rollups, presence events, resolved alerts) are trimmed with batched deletes.
SQLite: batched deletes by primary-key ranges everywhere, so a big purge never holds the single
writer lock for long.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from fleet.models import Alert, PresenceEvent, Rollup1h, Rollup1m, TelemetrySample

from . import partitions


def delete_in_batches(model, cutoff_field: str, cutoff: datetime, batch: int, raw: bool = True) -> int:
    """Delete rows older than ``cutoff`` a batch of primary keys at a time (``raw``: without
    Django's cascade collection, for tables nothing points to)."""
    total = 0
    while True:
        ids = list(
            model.objects.filter(**{f"{cutoff_field}__lt": cutoff})
            .order_by().values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return total
        with transaction.atomic():
            rows = model.objects.filter(pk__in=ids)
            total += rows._raw_delete(connection.alias) if raw else rows.delete()[1].get(
                model._meta.label, 0)
        if len(ids) < batch:
            return total


def _delete_default_partition(table: str, column: str, cutoff: datetime, batch: int) -> int:
    total = 0
    while True:
        with connection.cursor() as cur:
            cur.execute(
                f'DELETE FROM "{table}_default" WHERE ctid = ANY(ARRAY(SELECT ctid FROM '
                f'"{table}_default" WHERE "{column}" < %s LIMIT %s))',
                [cutoff, batch],
            )
            total += cur.rowcount
            if cur.rowcount < batch:
                return total


def apply_retention(now: datetime) -> dict:
    """Expire what is older than the configured retention; create tomorrow's partitions."""
    c = settings.EDGEFLEET_TELEMETRY
    batch = c["DELETE_BATCH"]
    raw_cutoff = now - timedelta(days=c["RAW_RETENTION_DAYS"])
    m1_cutoff = now - timedelta(days=c["ROLLUP_1M_RETENTION_DAYS"])
    h1_cutoff = now - timedelta(days=c["ROLLUP_1H_RETENTION_DAYS"])
    result: dict = {}
    if partitions.is_postgres():
        result["partitions_created"] = partitions.ensure_partitions(now, c["PARTITION_DAYS_AHEAD"])
        dropped = partitions.drop_partitions_before("fleet_telemetrysample", raw_cutoff)
        dropped += partitions.drop_partitions_before("fleet_rollup1m", m1_cutoff)
        result["partitions_dropped"] = dropped
        # Within the first kept day and in the default partition, rows go one batch at a time.
        result["raw_deleted"] = _delete_default_partition("fleet_telemetrysample", "ts", raw_cutoff, batch)
        result["rollup_1m_deleted"] = _delete_default_partition("fleet_rollup1m", "bucket", m1_cutoff, batch)
    else:
        result["raw_deleted"] = delete_in_batches(TelemetrySample, "ts", raw_cutoff, batch)
        result["rollup_1m_deleted"] = delete_in_batches(Rollup1m, "bucket", m1_cutoff, batch)
    result["rollup_1h_deleted"] = delete_in_batches(Rollup1h, "bucket", h1_cutoff, batch)
    # Events and resolved alerts live as long as the hourly rollups.
    result["presence_events_deleted"] = delete_in_batches(PresenceEvent, "at", h1_cutoff, batch)
    # Open alerts have no resolved_at and are never expired.
    result["alerts_deleted"] = delete_in_batches(Alert, "resolved_at", h1_cutoff, batch, raw=False)
    return result
