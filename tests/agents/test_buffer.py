"""The on-disk sample queue: persistent, bounded, ordered, crash-safe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from agents.buffer import ROW_OVERHEAD, Buffer, render_samples

from .conftest import agent_env


def sample(ts: float | None = None, **extra) -> dict:
    return {"ts": time.time() if ts is None else ts, "cpu_percent": 12.5, **extra}


def test_samples_survive_reopening_and_seq_keeps_rising(tmp_path):
    path = str(tmp_path / "b.sqlite3")
    buf = Buffer(path)
    assert [buf.append(sample()) for _ in range(3)] == [1, 2, 3]
    buf.close()

    buf = Buffer(path)
    assert [seq for seq, _ in buf.peek(10)] == [1, 2, 3]
    assert buf.append(sample()) == 4
    buf.ack(4)
    buf.close()

    # Everything acknowledged and the queue empty: the counter still never goes back.
    buf = Buffer(path)
    assert len(buf) == 0
    assert buf.append(sample()) == 5
    assert buf.check() == []


def test_peek_returns_oldest_first_and_render_builds_the_protocol_array(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"))
    t0 = round(time.time(), 3)
    for i in range(5):
        buf.append(sample(ts=t0 + i, n=i))
    rows = buf.peek(2)
    assert [seq for seq, _ in rows] == [1, 2]
    assert json.loads(render_samples(rows)) == [
        {"seq": 1, "ts": t0, "cpu_percent": 12.5, "n": 0},
        {"seq": 2, "ts": t0 + 1, "cpu_percent": 12.5, "n": 1},
    ]


def test_ack_removes_up_to_seq_and_only_the_reported_drops(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"), max_bytes=10**9)
    for _ in range(6):
        buf.append(sample())
    assert buf.ack(4, dropped_reported=0) == 4
    assert [seq for seq, _ in buf.peek(10)] == [5, 6]
    assert buf.stats()["acked_seq"] == 4
    # An old or repeated acknowledgement changes nothing.
    assert buf.ack(2) == 0
    assert buf.stats()["acked_seq"] == 4
    assert buf.check() == []


def test_tiny_size_limit_drops_the_oldest_and_counts_them_until_acked(tmp_path):
    ts = float(int(time.time()))  # a fixed width, so every sample has the same size
    body_size = len(json.dumps(sample(ts, pad="x" * 100), separators=(",", ":"))) + ROW_OVERHEAD
    buf = Buffer(str(tmp_path / "b.sqlite3"), max_bytes=3 * body_size)
    for _ in range(10):
        buf.append(sample(ts, pad="x" * 100))
    stats = buf.stats()
    assert stats["count"] == 3
    assert [seq for seq, _ in buf.peek(10)] == [8, 9, 10]  # the newest survive
    assert stats["dropped"] == 7
    assert stats["dropped_total"] == 7
    assert stats["bytes"] <= 3 * body_size

    # The server acknowledged a report that carried "dropped": 7; two more drops happen meanwhile.
    buf.append(sample(ts, pad="x" * 100))
    buf.append(sample(ts, pad="x" * 100))
    buf.ack(10, dropped_reported=7)
    assert buf.stats()["dropped"] == 2  # reset only by what the server acknowledged
    assert buf.stats()["dropped_total"] == 9
    assert buf.check() == []


def test_drop_counter_persists_across_restarts(tmp_path):
    path = str(tmp_path / "b.sqlite3")
    buf = Buffer(path, max_bytes=1)
    for _ in range(4):
        buf.append(sample())
    buf.close()
    assert Buffer(path).stats()["dropped"] == 3


def test_a_sample_larger_than_the_limit_is_still_kept_alone(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"), max_bytes=10)
    buf.append(sample())
    buf.append(sample())
    assert len(buf) == 1
    assert buf.stats()["dropped"] == 1


def test_age_bound_drops_samples_older_than_max_age(tmp_path):
    now = [10_000.0]
    buf = Buffer(str(tmp_path / "b.sqlite3"), max_age_s=3600, clock=lambda: now[0])
    for i in range(5):
        buf.append(sample(ts=now[0] - 7200 + i))  # two hours old
    assert len(buf) == 1  # each append drops what is too old, except the new sample itself
    buf.append(sample(ts=now[0]))
    assert [json.loads(b)["ts"] for _, b in buf.peek(10)] == [now[0]]
    assert buf.stats()["dropped_total"] == 5

    # Time passes with the agent idle: prune() applies the bound without a new sample.
    now[0] += 3601
    assert buf.prune() == 1
    assert len(buf) == 0
    assert buf.check() == []


def test_tightening_the_limits_applies_at_once(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"))
    for _ in range(10):
        buf.append(sample())
    assert buf.set_limits(max_bytes=1, max_age_s=86400) == 10
    assert len(buf) == 0


def test_reject_removes_refused_samples_and_counts_them(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"))
    for _ in range(3):
        buf.append(sample())
    assert buf.reject([2]) == 1
    assert [seq for seq, _ in buf.peek(10)] == [1, 3]
    assert buf.stats()["rejected_total"] == 1
    assert buf.stats()["dropped"] == 0  # refused is not dropped: the server saw it
    assert buf.check() == []


def test_rebase_renumbers_queued_samples_above_the_servers_seq(tmp_path):
    """A wiped state dir restarts at seq 1 while the server already holds seqs up to 500."""
    buf = Buffer(str(tmp_path / "b.sqlite3"))
    for _ in range(3):
        buf.append(sample())
    assert buf.rebase(500) == 503
    assert [seq for seq, _ in buf.peek(10)] == [501, 502, 503]
    assert buf.append(sample()) == 504
    assert buf.check() == []


def test_sync_full_is_accepted(tmp_path):
    buf = Buffer(str(tmp_path / "b.sqlite3"), sync="full")
    assert buf.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert buf.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_buffer_file_is_private(tmp_path):
    path = tmp_path / "b.sqlite3"
    Buffer(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600


WRITER = """
import sys, time
from agents.buffer import Buffer
buf = Buffer(sys.argv[1], max_bytes=200_000)
while True:
    seq = buf.append({"ts": time.time(), "cpu_percent": 1.0, "pad": "x" * 200})
    if seq % 7 == 0:
        buf.ack(seq - 20, dropped_reported=1)
    print(seq, flush=True)
"""


def test_sigkill_mid_stream_leaves_a_consistent_database(tmp_path):
    path = str(tmp_path / "b.sqlite3")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True, env=agent_env()
    )
    committed = []
    try:
        for line in child.stdout:
            committed.append(int(line))
            if len(committed) >= 1500:  # enough to go past the size bound and a WAL checkpoint
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert committed == list(range(1, len(committed) + 1))

    buf = Buffer(path, max_bytes=200_000)
    assert buf.check() == []
    stats = buf.stats()
    # Every sample the writer saw committed is durable: the counter got at least that far ...
    assert stats["last_seq"] >= committed[-1]
    # ... and the queue holds a gap-free run of seqs ending at last_seq.
    seqs = [seq for seq, _ in buf.peek(10**6)]
    assert seqs == list(range(seqs[0], stats["last_seq"] + 1))
    assert buf.append(sample()) == stats["last_seq"] + 1
