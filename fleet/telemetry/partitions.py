"""Daily partitions on PostgreSQL for the two big tables (raw samples and 1-minute rollups).

Why partitions: retention then drops a whole day with ``DROP TABLE`` (instant, no bloat, no
vacuum debt) instead of deleting millions of rows. A ``DEFAULT`` partition catches rows outside
the days created so far (clock-skewed devices, a replay older than the oldest partition); the
retention task deletes old rows from it in batches, and creating a day that already has rows in
the default partition moves them first. On SQLite the same tables are plain tables and retention
deletes in batches.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from django.db import connection, migrations, transaction

log = logging.getLogger(__name__)

# table -> (partition column, unique columns). The unique key must contain the partition column.
PARTITIONED = {
    "fleet_telemetrysample": ("ts", "device_id, ts, seq", "fleet_sample_device_seq"),
    "fleet_rollup1m": ("bucket", "device_id, bucket", "fleet_rollup1m_device_bucket"),
}


def is_postgres(conn=connection) -> bool:
    return conn.vendor == "postgresql"


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


class PartitionByDayOnPostgres(migrations.operations.base.Operation):
    """Recreate a freshly created (empty) table as a table partitioned by day, on PostgreSQL only.

    The model state is untouched: Django keeps reading and writing the table by its name."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, table: str):
        self.table = table

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        column, unique_cols, unique_name = PARTITIONED[self.table]
        t = self.table
        for sql in (
            f'ALTER TABLE "{t}" RENAME TO "{t}_old"',
            f'CREATE TABLE "{t}" (LIKE "{t}_old" INCLUDING DEFAULTS INCLUDING IDENTITY) '
            f'PARTITION BY RANGE ("{column}")',
            f'DROP TABLE "{t}_old"',
            f'ALTER TABLE "{t}" ADD CONSTRAINT "{unique_name}" UNIQUE ({unique_cols})',
            f'CREATE INDEX "{t}_{column}_brin" ON "{t}" USING brin ("{column}")',
            f'CREATE TABLE "{t}_default" PARTITION OF "{t}" DEFAULT',
        ):
            schema_editor.execute(sql)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        pass  # the CreateModel being reversed drops the table with its partitions

    def describe(self) -> str:
        return f"Partition {self.table} by day on PostgreSQL"

    def deconstruct(self):
        return (f"{self.__class__.__module__}.{self.__class__.__qualname__}", [self.table], {})


def _day(value: datetime | date) -> date:
    if isinstance(value, datetime):
        return value.astimezone(UTC).date() if value.tzinfo else value.date()
    return value


def existing_partitions(table: str) -> dict[date, str]:
    """Day partitions of ``table`` (not the default one), by day."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [table],
        )
        names = [row[0] for row in cur.fetchall()]
    days = {}
    prefix = f"{table}_p"
    for name in names:
        if name.startswith(prefix):
            try:
                days[datetime.strptime(name[len(prefix):], "%Y%m%d").date()] = name  # noqa: DTZ007
            except ValueError:
                continue
    return days


def ensure_partitions(now: datetime, days_ahead: int = 7, days_back: int = 1) -> list[str]:
    """Create the day partitions from ``now - days_back`` to ``now + days_ahead`` that are
    missing, moving any rows the default partition holds for those days. Returns the new names."""
    if not is_postgres():
        return []
    created = []
    for table, (column, _, _) in PARTITIONED.items():
        have = existing_partitions(table)
        start = _day(now) - timedelta(days=days_back)
        for offset in range(days_back + days_ahead + 1):
            day = start + timedelta(days=offset)
            if day in have:
                continue
            name = partition_name(table, day)
            lo, hi = day.isoformat(), (day + timedelta(days=1)).isoformat()
            bounds = f"FROM ('{lo} 00:00:00+00') TO ('{hi} 00:00:00+00')"
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS)')
                cur.execute(
                    f'WITH moved AS (DELETE FROM "{table}_default" WHERE "{column}" >= %s '
                    f'AND "{column}" < %s RETURNING *) INSERT INTO "{name}" SELECT * FROM moved',
                    [f"{lo} 00:00:00+00", f"{hi} 00:00:00+00"],
                )
                cur.execute(f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES {bounds}')
            created.append(name)
    return created


def drop_partitions_before(table: str, cutoff: datetime) -> list[str]:
    """Drop the day partitions of ``table`` that end at or before ``cutoff``."""
    if not is_postgres():
        return []
    dropped = []
    for day, name in sorted(existing_partitions(table).items()):
        if day + timedelta(days=1) <= _day(cutoff):
            with connection.cursor() as cur:
                cur.execute(f'DROP TABLE "{name}"')
            dropped.append(name)
    return dropped
