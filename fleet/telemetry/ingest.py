"""Telemetry ingest: validate a batch in plain Python, store it in one statement, acknowledge.

This is the hottest path of the server (10,000 samples/s on 2 cores is the goal), so it avoids
per-sample ORM objects and serializers: a sample is checked against a table of field rules and
becomes a tuple; the batch goes to the database as one ``INSERT ... SELECT FROM
json_to_recordset(...)`` on PostgreSQL, in the same statement as the coalesced ``last_seen`` write
(one round trip whatever the batch size), or one ``executemany`` on SQLite.

Batch semantics (the agent relies on them; see docs/telemetry.md):

- A batch is stored whole or not at all. One invalid sample makes the whole batch a 400 naming
  each bad sample by its index; nothing is stored. The agent halves a refused batch until the bad
  sample stands alone and then gives that one up, so a bad sample costs a few requests, never a
  stuck queue.
- ``acked_seq`` is the highest seq the server holds for the device (at least the batch's highest).
  Samples at or below the highest seq already stored are replays and are skipped, so a batch sent
  twice is stored once. An ``acked_seq`` above what the agent ever issued tells it that its state
  directory was reset, and it renumbers its buffer.
- Drops: the agent reports ``dropped`` (not yet reported) and ``dropped_total`` (cumulative). The
  device's counter becomes ``dropped_total`` (never lowered), which a replay cannot inflate. From a
  client without ``dropped_total``, ``dropped`` is added when the batch stored something new.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import F, Q

from fleet.models import Device, DevicePresence, PresenceState, RollupDirty

TABLE = "fleet_telemetrysample"
MAX_INT = 2**63 - 1
MAX_ERRORS_REPORTED = 20


class BatchRejected(Exception):
    """The batch as a whole is unacceptable (400, or 413 when too large)."""

    def __init__(self, detail: str, status: int = 400, errors: dict | None = None):
        super().__init__(detail)
        self.detail, self.status, self.errors = detail, status, errors

    def body(self) -> dict:
        body: dict = {"detail": self.detail, "code": "invalid_telemetry"}
        if self.errors is not None:
            body["errors"] = self.errors
        if self.status == 413:
            body["max_samples"] = conf()["MAX_BATCH"]
        return body


def conf() -> dict:
    return settings.EDGEFLEET_TELEMETRY


# --- field rules ----------------------------------------------------------------------------------
# name -> (kind, minimum, maximum, required). kind "int": integral numbers (bytes, counters);
# "float": any finite number. Unknown fields are ignored, so newer agents can send more.

_PCT = (0.0, 100.0)
FIELDS: dict[str, tuple[str, float, float, bool]] = {
    "cpu_percent": ("float", *_PCT, True),
    "load_1m": ("float", 0.0, 1e6, False),
    "load_5m": ("float", 0.0, 1e6, False),
    "load_15m": ("float", 0.0, 1e6, False),
    "mem_used_bytes": ("int", 0, MAX_INT, True),
    "mem_total_bytes": ("int", 0, MAX_INT, True),
    "swap_used_bytes": ("int", 0, MAX_INT, False),
    "swap_total_bytes": ("int", 0, MAX_INT, False),
    "disk_used_bytes": ("int", 0, MAX_INT, False),
    "disk_total_bytes": ("int", 0, MAX_INT, False),
    "net_rx_bytes_per_s": ("float", 0.0, 1e15, False),
    "net_tx_bytes_per_s": ("float", 0.0, 1e15, False),
    "temperature_c": ("float", -100.0, 250.0, False),
    "uptime_s": ("float", 0.0, 1e10, False),
    "agent_rss_bytes": ("int", 0, MAX_INT, False),
    "agent_cpu_percent": ("float", 0.0, 100.0 * 1024, False),
}
COLUMNS: tuple[str, ...] = ("seq", "ts", *FIELDS)


def _number(value, kind: str, lo: float, hi: float) -> tuple[float | int | None, str | None]:
    # bool is an int in Python, but `true` is not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be a number, not {type(value).__name__ if value is not None else 'null'}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None, "must be a finite number (NaN and infinity are refused)"
        if kind == "int":
            if not value.is_integer():
                return None, "must be a whole number"
            value = int(value)
    elif kind == "float":
        value = float(value)
    if not lo <= value <= hi:
        return None, f"must be between {lo:g} and {hi:g}"
    return value, None


def parse_ts(value) -> tuple[float | None, str | None]:
    """Epoch seconds (int or float) or an ISO 8601 string with a timezone -> epoch seconds."""
    if isinstance(value, bool):
        return None, "must be epoch seconds or an ISO 8601 timestamp"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return None, "must be a finite number"
        return float(value), None
    if isinstance(value, str) and 10 <= len(value) <= 40:
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None, "is not an ISO 8601 timestamp"
        if parsed.tzinfo is None:
            return None, "needs a timezone (e.g. Z or +00:00)"
        return parsed.timestamp(), None
    return None, "must be epoch seconds or an ISO 8601 timestamp"


_RULES: tuple[tuple[str, bool, float, float, bool], ...] = tuple(
    (name, kind == "int", lo, hi, required) for name, (kind, lo, hi, required) in FIELDS.items()
)


def validate_samples(samples, now_epoch: float) -> tuple[list[tuple], dict[str, dict]]:
    """Each valid sample as a tuple in ``COLUMNS`` order; errors keyed by the sample's index.

    The loop is the per-sample cost of ingest, so well-formed values take a fast path (exact type
    checks and one chained comparison, which NaN and infinities fail); anything else goes through
    ``_number`` for the precise error message."""
    c = conf()
    max_future = now_epoch + c["MAX_FUTURE_S"]
    oldest = now_epoch - c["RAW_RETENTION_DAYS"] * 86400
    rows: list[tuple] = []
    errors: dict[str, dict] = {}
    rules = _RULES
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict):
            errors[str(index)] = {"sample": "must be a JSON object"}
            continue
        problems: dict[str, str] = {}
        seq = sample.get("seq")
        if type(seq) is not int or not 1 <= seq <= MAX_INT:
            seq, err = _number(seq, "int", 1, MAX_INT)
            if err:
                problems["seq"] = "is required" if "seq" not in sample else err
        ts = sample.get("ts")
        if type(ts) is float or type(ts) is int:
            try:
                ts, err = float(ts), None
            except OverflowError:
                ts, err = None, "must be a finite number"
        elif "ts" not in sample:
            err = "is required"
        else:
            ts, err = parse_ts(ts)
        if err is None and not oldest <= ts <= max_future:
            if not math.isfinite(ts):
                err = "must be a finite number"
            elif ts > max_future:
                err = (
                    f"is {ts - now_epoch:.0f} s in the future (more than {c['MAX_FUTURE_S']} s "
                    "ahead of the server's clock); check the device's clock"
                )
            else:
                err = f"is older than the raw retention ({c['RAW_RETENTION_DAYS']} days)"
        if err:
            problems["ts"] = err
        row = [seq, ts]
        append = row.append
        for name, is_int, lo, hi, required in rules:
            value = sample.get(name)
            kind = type(value)
            if kind is float:
                if lo <= value <= hi and (not is_int or value.is_integer()):
                    append(int(value) if is_int else value)
                    continue
            elif kind is int:
                if lo <= value <= hi:
                    append(value if is_int else float(value))
                    continue
            elif value is None:
                if required:
                    problems[name] = "is required"
                append(None)
                continue
            value, err = _number(value, "int" if is_int else "float", lo, hi)
            if err:
                problems[name] = err
            append(value)
        if problems:
            errors[str(index)] = problems
        else:
            rows.append(tuple(row))
    return rows, errors


# --- storing ----------------------------------------------------------------------------------------

_KINDS = {"seq": "int8", "ts": "float8", **{n: ("int8" if FIELDS[n][0] == "int" else "float8") for n in FIELDS}}


def _pg_statement(with_rows: bool) -> str:
    """One statement (one round trip, one implicit transaction) that stores the rows and writes
    the coalesced ``last_seen`` (and the announced report period along with it).

    The rows travel as one JSON text parameter read by ``json_to_recordset``: quoting one string is
    far cheaper in Python than adapting one array per column element by element."""
    device_t, presence_t = Device._meta.db_table, DevicePresence._meta.db_table
    ctes = []
    if with_rows:
        names = ", ".join(COLUMNS)
        select = ", ".join("to_timestamp(r.ts)" if n == "ts" else f"r.{n}" for n in COLUMNS)
        typed = ", ".join(f"{n} {_KINDS[n]}" for n in COLUMNS)
        ctes.append(
            f"ins AS (INSERT INTO {TABLE} (device_id, {names}) SELECT %(device)s::uuid, {select} "
            f"FROM json_to_recordset(%(rows)s::json) AS r({typed}) ON CONFLICT DO NOTHING RETURNING 1)"
        )
    ctes.append(
        f"seen AS (UPDATE {device_t} SET last_seen = %(seen_at)s WHERE id = %(device)s "
        "AND (last_seen IS NULL OR last_seen < %(stale_before)s) RETURNING 1)"
    )
    ctes.append(
        f"per AS (UPDATE {presence_t} SET report_period_s = %(period)s WHERE device_id = %(device)s "
        "AND report_period_s IS DISTINCT FROM %(period)s AND EXISTS (SELECT 1 FROM seen) RETURNING 1)"
    )
    stored = "(SELECT count(*) FROM ins)" if with_rows else "0"
    return f"WITH {', '.join(ctes)} SELECT {stored}, (SELECT count(*) FROM seen), (SELECT count(*) FROM per)"


_PG_SQL = {True: _pg_statement(True), False: _pg_statement(False)}


def _store_postgres(device_id, rows: list[tuple], seen_at: datetime, stale_before: datetime,
                    period: float) -> tuple[int, bool]:
    params = {"device": device_id, "seen_at": seen_at, "stale_before": stale_before, "period": period}
    if rows:
        params["rows"] = json.dumps([dict(zip(COLUMNS, row, strict=True)) for row in rows],
                                    separators=(",", ":"))
    with connection.cursor() as cur:
        cur.execute(_PG_SQL[bool(rows)], params)
        stored, seen, _ = cur.fetchone()
    return stored, bool(seen)


def _store_sqlite(device_id, rows: list[tuple], seen_at: datetime, stale_before: datetime,
                  period: float) -> tuple[int, bool]:
    stored = 0
    if rows:
        adapt = connection.ops.adapt_datetimefield_value
        hexid = device_id.hex
        params = [
            (hexid, row[0], adapt(datetime.fromtimestamp(row[1], UTC)), *row[2:]) for row in rows
        ]
        placeholders = ", ".join(["%s"] * (len(COLUMNS) + 1))
        sql = f"INSERT OR IGNORE INTO {TABLE} (device_id, {', '.join(COLUMNS)}) VALUES ({placeholders})"
        with connection.cursor() as cur:
            cur.executemany(sql, params)
            stored = max(cur.rowcount, 0)
    seen = Device.objects.filter(
        Q(last_seen__isnull=True) | Q(last_seen__lt=stale_before), pk=device_id
    ).update(last_seen=seen_at)
    if seen:
        DevicePresence.objects.filter(pk=device_id).exclude(report_period_s=period).update(
            report_period_s=period
        )
    return stored, bool(seen)


def store(device_id, rows: list[tuple], seen_at: datetime, stale_before: datetime,
          period: float) -> tuple[int, bool]:
    """Store validated rows (duplicates ignored) and, unless it was written after
    ``stale_before``, the device's ``last_seen``. Returns (rows inserted, last_seen written)."""
    if connection.vendor == "postgresql":
        return _store_postgres(device_id, rows, seen_at, stale_before, period)
    return _store_sqlite(device_id, rows, seen_at, stale_before, period)


def stored_max_seq(device_id) -> int:
    """The highest seq stored for a device (an index scan; the cache spares most requests it)."""
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT max(seq) FROM {TABLE} WHERE device_id = %s",
            [device_id if connection.vendor == "postgresql" else device_id.hex],
        )
        value = cur.fetchone()[0]
    return int(value or 0)


# --- the per-device high-water mark (highest seq stored), in the cache -----------------------------
# Django's Redis cache builds a new redis-py client object (hundreds of response callbacks) on every
# call, which cost more CPU than the rest of a report's cache work; on Redis we keep one client per
# process on the same server and database, with keys and values Django's cache reads the same way
# (Django stores ints as plain integers). The high-water mark only ever rises (a Lua script), so
# two reports of one device racing cannot lower it.

_MAX_SET = """
local cur = redis.call('GET', KEYS[1])
local new = ARGV[1]
if (not cur) or #new > #cur or (#new == #cur and new > cur) then
  redis.call('SET', KEYS[1], new, 'EX', ARGV[2])
  return new
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return cur
"""
_redis_state: dict = {}


def _redis():
    """(client, script) on the default cache's Redis, or None when the cache is not Redis."""
    state = _redis_state.get("state", ...)
    if state is ...:
        state = None
        conf_ = settings.CACHES.get("default", {})
        location = conf_.get("LOCATION")
        if conf_.get("BACKEND") == "django.core.cache.backends.redis.RedisCache" and isinstance(location, str):
            import redis

            client = redis.Redis.from_url(location)
            state = (client, client.register_script(_MAX_SET))
        _redis_state["state"] = state
    return state


def _seq_key(device_id) -> str:
    return f"ef:tel:seq:{device_id}"


def cached_max_seq(device_id) -> int | None:
    state = _redis()
    if state is None:
        return cache.get(_seq_key(device_id))
    value = state[0].get(cache.make_and_validate_key(_seq_key(device_id)))
    return None if value is None else int(value)


def remember_max_seq(device_id, value: int) -> None:
    ttl = conf()["SEQ_CACHE_TTL_S"]
    state = _redis()
    if state is None:
        cache.set(_seq_key(device_id), value, timeout=ttl)
    else:
        state[1](keys=[cache.make_and_validate_key(_seq_key(device_id))], args=[str(value), ttl])


@dataclass
class IngestResult:
    acked_seq: int
    received: int
    stored: int
    skipped: int = 0
    last_seen_written: bool = False
    dirty_hours: list = field(default_factory=list)


def report_period(body: dict) -> float:
    """The agent's reporting period (interval × batch size) it announces; else the server's."""
    from fleet.api.agent import agent_config

    default = agent_config()
    interval, batch = body.get("interval_s"), body.get("batch_size")
    if not isinstance(interval, int | float) or isinstance(interval, bool) or not (0 < interval < 86400):
        interval = default["telemetry_interval_s"]
    if not isinstance(batch, int) or isinstance(batch, bool) or not (0 < batch <= 10000):
        batch = default["batch_size"]
    return round(float(interval) * batch, 3)


def ingest(device: Device, body, *, now: float | None = None) -> IngestResult:
    """Validate and store one telemetry report of ``device``; raises BatchRejected.

    Costs, whatever the batch size: one cache read (the high-water mark), one SQL statement on
    PostgreSQL (rows, coalesced ``last_seen`` and announced period together, in its own implicit
    transaction), one cache write when the mark rose. Drops and late samples add their own writes,
    and then everything goes in one transaction."""
    now = time.time() if now is None else now
    c = conf()
    if not isinstance(body, dict):
        raise BatchRejected('the body must be a JSON object {"samples": [...], "dropped": n}')
    samples = body.get("samples")
    if not isinstance(samples, list):
        raise BatchRejected('"samples" must be a list of sample objects')
    if len(samples) > c["MAX_BATCH"]:
        raise BatchRejected(
            f"too many samples in one batch: {len(samples)} (at most {c['MAX_BATCH']}); "
            "send smaller batches",
            status=413,
        )
    dropped = body.get("dropped", 0)
    if dropped is None:
        dropped = 0
    if isinstance(dropped, bool) or not isinstance(dropped, int) or not 0 <= dropped <= MAX_INT:
        raise BatchRejected('"dropped" must be a whole number >= 0', errors={"dropped": "invalid"})
    rows, errors = validate_samples(samples, now)
    if errors:
        shown = dict(list(errors.items())[:MAX_ERRORS_REPORTED])
        raise BatchRejected(
            f"{len(errors)} of {len(samples)} samples are invalid; nothing was stored. "
            "Fix or drop the samples listed in errors (by index) and send the rest again.",
            errors=shown,
        )

    # What we already hold: replays are skipped before they reach the database.
    device_id = device.pk
    cached = cached_max_seq(device_id)
    known_max = stored_max_seq(device_id) if cached is None else cached
    fresh = [row for row in rows if row[0] > known_max]
    batch_max = max((row[0] for row in rows), default=0)
    acked = max(known_max, batch_max)

    # last_seen: at most one write per device per coalescing window, decided by the database in the
    # same statement (``WHERE last_seen < now - window``): no extra round trip, no cache entry.
    period = report_period(body)
    window = max(1.0, min(float(settings.EDGEFLEET["TELEMETRY_INTERVAL_S"]), period / 3))
    seen_at = datetime.fromtimestamp(now, UTC)
    stale_before = datetime.fromtimestamp(now - window, UTC)

    total = body.get("dropped_total")
    has_total = isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= MAX_INT
    late_before = now - c["ROLLUP_LATE_AFTER_S"]
    late = any(row[1] < late_before for row in fresh)
    single = (connection.vendor == "postgresql" and c["SYNCHRONOUS_COMMIT"] and not dropped and not late)
    if single:
        # One statement in autocommit mode: one round trip and its own commit.
        stored, wrote_seen = store(device_id, fresh, seen_at, stale_before, period)
        dirty: list = []
    else:
        # One transaction, so one commit (one WAL flush) per report, whatever it writes.
        with transaction.atomic():
            if not c["SYNCHRONOUS_COMMIT"] and connection.vendor == "postgresql":
                with connection.cursor() as cur:
                    cur.execute("SET LOCAL synchronous_commit = off")
            stored, wrote_seen = store(device_id, fresh, seen_at, stale_before, period)
            if dropped and has_total:
                # The agent's own cumulative count: idempotent however often a report is replayed.
                record_dropped(device, now, total=total)
            elif dropped and (stored or not samples):
                record_dropped(device, now, increment=dropped)
            # Late samples (a backlog after an outage): the rollups of their hours must be recomputed.
            dirty = []
            if stored and late:
                dirty = sorted({int(row[1] // 3600) * 3600 for row in fresh if row[1] < late_before})
                RollupDirty.objects.bulk_create(
                    [RollupDirty(device_id=device_id, hour=datetime.fromtimestamp(h, UTC)) for h in dirty],
                    ignore_conflicts=True,
                )
    if acked != cached:
        remember_max_seq(device_id, acked)
    return IngestResult(acked_seq=acked, received=len(samples), stored=stored,
                        skipped=len(rows) - len(fresh), last_seen_written=wrote_seen, dirty_hours=dirty)


def record_dropped(device: Device, now: float, *, total: int | None = None, increment: int = 0) -> None:
    """Raise the device's count of samples its agent dropped: to the agent's cumulative ``total``
    when it sends one, else by ``increment``."""
    rows = DevicePresence.objects.filter(pk=device.pk)
    if total is not None:
        updated = rows.filter(dropped_samples__lt=total).update(dropped_samples=total)
    else:
        updated = rows.update(dropped_samples=F("dropped_samples") + increment)
    if updated:
        return
    _, created = DevicePresence.objects.get_or_create(
        device_id=device.pk,
        defaults={"state": PresenceState.ONLINE, "since": datetime.fromtimestamp(now, UTC),
                  "dropped_samples": total if total is not None else increment},
    )
    if not created and total is None:
        rows.update(dropped_samples=F("dropped_samples") + increment)
