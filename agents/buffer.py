"""The on-disk queue of samples not yet acknowledged by the server (SQLite in the state dir).

Every sample gets the next ``seq`` of this device when it is stored, in the same transaction, so
``seq`` rises across restarts and is never reused. Samples leave the queue only when the server
acknowledges them (``ack``), when the server refuses them for good (``reject``), or when a bound
is hit: beyond ``max_bytes`` or ``max_age_s`` the *oldest* samples are dropped and counted. The
count of dropped samples is kept in the database and reported to the server with each batch; it
is decreased only by what the server has acknowledged, so no drop goes unreported across
restarts or failed sends.

Durability (``sync``):

- ``normal`` (default): WAL journal with ``synchronous=NORMAL``. Every committed sample survives
  a crash or SIGKILL of the agent. On power loss the samples committed since the last WAL
  checkpoint (at most about a megabyte, typically the last few minutes) may be lost, but the
  database is never corrupted. No fsync per sample, which spares SD cards and eMMC.
- ``full``: WAL with ``synchronous=FULL``: an fsync of the WAL on every sample; survives power
  loss too, at the price of one flash write per interval.

A clean shutdown checkpoints the WAL into the database file (which fsyncs it) in both modes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time

# Bytes a row costs beyond its JSON body (seq, ts, nbytes, record header, b-tree cell): an
# estimate, so that the size bound is close to what the database file actually holds.
ROW_OVERHEAD = 40

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq    INTEGER PRIMARY KEY,   -- the device's rising sequence number
    ts     REAL NOT NULL,         -- sample time, epoch seconds (for the age bound)
    nbytes INTEGER NOT NULL,      -- accounted size of the row
    body   TEXT NOT NULL          -- the sample as a JSON object, without its seq
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES
    ('last_seq', 0), ('acked_seq', 0), ('count', 0), ('bytes', 0),
    ('dropped', 0), ('dropped_total', 0), ('rejected_total', 0);
"""


def _json(sample: dict) -> str:
    return json.dumps(sample, separators=(",", ":"), allow_nan=False)


class Buffer:
    """A bounded, persistent FIFO of samples. One writer (the daemon); readers may look on."""

    def __init__(
        self,
        path: str,
        max_bytes: int = 32 * 1024**2,
        max_age_s: float = 86400.0,
        sync: str = "normal",
        clock=time.time,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        if not os.path.exists(path):
            # The queue holds no secret, but it is nobody else's business either.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self.db.execute("PRAGMA cache_size=-256")  # KiB; the agent's memory budget is small
        self.db.execute("PRAGMA wal_autocheckpoint=256")  # pages: keep the WAL near 1 MiB
        self.db.execute("PRAGMA journal_size_limit=1048576")
        with self._tx():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)

    # --- transactions and counters --------------------------------------------------------------

    def _tx(self):
        return _Transaction(self.db)

    def _meta(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def _add(self, **deltas: int) -> None:
        for key, delta in deltas.items():
            if delta:
                self.db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (delta, key))

    def _set(self, **values: int) -> None:
        for key, value in values.items():
            self.db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # --- writing --------------------------------------------------------------------------------

    def append(self, sample: dict) -> int:
        """Store a sample (without ``seq``; ``ts`` in epoch seconds is required); return its seq.

        Then enforce the bounds, dropping the oldest samples (never this one)."""
        body = _json({k: v for k, v in sample.items() if k != "seq"})
        ts = float(sample["ts"])
        nbytes = len(body) + ROW_OVERHEAD
        with self._tx():
            (seq,) = self.db.execute("SELECT value + 1 FROM meta WHERE key = 'last_seq'").fetchone()
            self.db.execute(
                "INSERT INTO samples (seq, ts, nbytes, body) VALUES (?, ?, ?, ?)",
                (seq, ts, nbytes, body),
            )
            self._set(last_seq=seq)
            self._add(count=1, bytes=nbytes)
            self._enforce_bounds(keep_seq=seq)
        return seq

    def prune(self) -> int:
        """Apply the bounds now (e.g. after the limits changed); return how many were dropped."""
        with self._tx():
            return self._enforce_bounds(keep_seq=None)

    def set_limits(self, max_bytes: int, max_age_s: float) -> int:
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        return self.prune()

    def _enforce_bounds(self, keep_seq: int | None) -> int:
        """Drop the oldest samples beyond the age and size bounds. Inside a transaction."""
        cutoff_ts = self.clock() - self.max_age_s
        (total,) = self.db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone()
        excess = total - self.max_bytes
        if excess <= 0:
            head = self.db.execute("SELECT ts FROM samples ORDER BY seq LIMIT 1").fetchone()
            if head is None or head[0] >= cutoff_ts:
                return 0  # the common case: one indexed lookup per sample
        dropped = dropped_bytes = 0
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, ts, nbytes FROM samples WHERE seq > ? ORDER BY seq LIMIT 256", (last,)
            ).fetchall()
            stop = not rows
            for seq, ts, nbytes in rows:
                # Age is judged in seq order: the oldest sample is the head of the queue.
                if seq == keep_seq or (ts >= cutoff_ts and dropped_bytes >= excess):
                    stop = True
                    break
                last = seq
                dropped += 1
                dropped_bytes += nbytes
            if stop:
                break
        if dropped:
            self.db.execute("DELETE FROM samples WHERE seq <= ?", (last,))
            self._add(count=-dropped, bytes=-dropped_bytes, dropped=dropped, dropped_total=dropped)
        return dropped

    def ack(self, acked_seq: int, dropped_reported: int = 0) -> int:
        """The server has stored every sample up to ``acked_seq`` and learned of
        ``dropped_reported`` drops: forget them. Returns how many samples left the queue."""
        with self._tx():
            count, nbytes = self.db.execute(
                "SELECT count(*), coalesce(sum(nbytes), 0) FROM samples WHERE seq <= ?",
                (acked_seq,),
            ).fetchone()
            if count:
                self.db.execute("DELETE FROM samples WHERE seq <= ?", (acked_seq,))
            meta = self._meta()
            self._set(
                acked_seq=max(meta["acked_seq"], min(acked_seq, meta["last_seq"])),
                dropped=max(0, meta["dropped"] - max(0, dropped_reported)),
            )
            self._add(count=-count, bytes=-nbytes)
        if count:
            self._reclaim()
        return count

    def reject(self, seqs: list[int]) -> int:
        """The server refused these samples for good (e.g. a 400 for one sample): remove them so
        they cannot block the queue, and count them. Returns how many were removed."""
        if not seqs:
            return 0
        with self._tx():
            marks = ",".join("?" * len(seqs))
            count, nbytes = self.db.execute(
                f"SELECT count(*), coalesce(sum(nbytes), 0) FROM samples WHERE seq IN ({marks})",
                seqs,
            ).fetchone()
            self.db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", seqs)
            self._add(count=-count, bytes=-nbytes, rejected_total=count)
        return count

    def rebase(self, floor: int) -> int:
        """The server already holds seqs up to ``floor`` that this buffer never issued (the state
        dir was wiped while the device stayed enrolled): renumber the queued samples above
        ``floor`` so the server does not take them for replays. Returns the new last seq."""
        with self._tx():
            meta = self._meta()
            low, high = self.db.execute("SELECT min(seq), max(seq) FROM samples").fetchone()
            if low is not None and low <= floor:
                # Shifting every seq above the old maximum keeps the primary key unique throughout.
                self.db.execute("UPDATE samples SET seq = seq + ?", (floor + 1 - low,))
                high += floor + 1 - low
            last = max(meta["last_seq"], floor, high or 0)
            self._set(last_seq=last, acked_seq=max(meta["acked_seq"], floor))
        return last

    def _reclaim(self) -> None:
        # After a large backlog drains, give the pages back to the filesystem, a bit at a time.
        (free,) = self.db.execute("PRAGMA freelist_count").fetchone()
        if free > 256:
            self.db.execute("PRAGMA incremental_vacuum(1024)").fetchall()

    # --- reading --------------------------------------------------------------------------------

    def peek(self, limit: int) -> list[tuple[int, str]]:
        """The oldest ``limit`` samples as ``(seq, json_body_without_seq)``, oldest first."""
        return self.db.execute(
            "SELECT seq, body FROM samples ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()

    def stats(self) -> dict:
        """Counters for the status file: count, bytes, last_seq, acked_seq, dropped (not yet
        reported), dropped_total, rejected_total, oldest_ts."""
        meta = self._meta()
        row = self.db.execute("SELECT ts FROM samples ORDER BY seq LIMIT 1").fetchone()
        meta["oldest_ts"] = row[0] if row else None
        return meta

    def __len__(self) -> int:
        return self._meta()["count"]

    def check(self) -> list[str]:
        """Consistency problems (empty when sound): SQLite's integrity check and our counters."""
        problems = []
        (integrity,) = self.db.execute("PRAGMA integrity_check").fetchone()
        if integrity != "ok":
            problems.append(f"integrity_check: {integrity}")
        meta = self._meta()
        count, nbytes, high = self.db.execute(
            "SELECT count(*), coalesce(sum(nbytes), 0), coalesce(max(seq), 0) FROM samples"
        ).fetchone()
        if count != meta["count"]:
            problems.append(f"count {meta['count']} but {count} rows")
        if nbytes != meta["bytes"]:
            problems.append(f"bytes {meta['bytes']} but rows hold {nbytes}")
        if high > meta["last_seq"]:
            problems.append(f"last_seq {meta['last_seq']} below stored seq {high}")
        return problems

    def close(self) -> None:
        """Checkpoint the WAL into the database file (durable even with sync=normal) and close."""
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.db.close()


def render_samples(rows: list[tuple[int, str]]) -> str:
    """The JSON array of samples for a telemetry body, without decoding the stored JSON."""
    return (
        "["
        + ",".join(
            f'{{"seq":{seq},{body[1:]}' if body != "{}" else f'{{"seq":{seq}}}'
            for seq, body in rows
        )
        + "]"
    )


def open_readonly_stats(path: str) -> dict | None:
    """Counters of a buffer another process owns, without creating or changing anything."""
    if not os.path.exists(path):
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None  # created a moment ago, schema not committed yet
            raise
        row = db.execute("SELECT ts FROM samples ORDER BY seq LIMIT 1").fetchone()
        meta["oldest_ts"] = row[0] if row else None
        return meta
    finally:
        db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error), nestable as a no-op."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
