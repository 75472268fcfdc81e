"""Telemetry ingest benchmark: the real server (gunicorn, PostgreSQL, Redis) on loopback.

Phases, each bounded in time:
1. fleets of 1,000 / 5,000 / 10,000 simulated devices sampling every 10 s and reporting in batches
   of 3 (the agent's defaults): request p50/p99 and the CPU the gunicorn processes used;
2. saturation: a few hundred devices sending batches back to back: samples/s stored, and the count
   stored checked against the count acknowledged;
3. the ceiling: PostgreSQL COPY of as many rows of the same shape into a table with the same indexes.

Usage (see README.md): .venv/bin/python bench/ingest/run.py [--fleets 1000,5000,10000] [--phase-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import cpu_seconds, free_port, sh  # noqa: E402
from fleet import simulator  # noqa: E402  (plain Python, no Django)

PY = str(REPO / ".venv" / "bin" / "python")


def psql(db_url: str, sql: str) -> str:
    return sh("psql", db_url, "-At", "-c", sql).strip()


def copy_ceiling(db_url: str, rows: int) -> float:
    """Rows/s of COPY into a plain table with the same columns and indexes as the samples table."""
    import psycopg

    rng = random.Random(7)
    device_ids = [uuid.uuid4() for _ in range(200)]
    cols = ("device_id, seq, ts, cpu_percent, load_1m, mem_used_bytes, mem_total_bytes, swap_used_bytes, "
            "disk_used_bytes, disk_total_bytes, net_rx_bytes_per_s, net_tx_bytes_per_s, temperature_c, "
            "uptime_s, agent_rss_bytes")
    now = time.time()
    data = [
        (device_ids[i % 200], i, datetime.fromtimestamp(now - i % 3600, UTC), rng.uniform(0, 100), 0.5,
         10**9, 4 * 10**9, 0, 10**10, 6 * 10**10, 1200.0, 800.0, 45.0, 3600.0, 18 * 10**6)
        for i in range(rows)
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute("CREATE TABLE bench_copy (LIKE fleet_telemetrysample INCLUDING DEFAULTS INCLUDING IDENTITY)")
        conn.execute("ALTER TABLE bench_copy ADD UNIQUE (device_id, ts, seq)")
        conn.execute("CREATE INDEX ON bench_copy USING brin (ts)")
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY bench_copy ({cols}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        elapsed = time.perf_counter() - t0
        conn.execute("DROP TABLE bench_copy")
    return rows / elapsed


PROVISION = """
import json, sys
from django.db import transaction
from fleet.models import Device, DeviceCredential
from fleet.secrets import DEVICE_PREFIX, display_prefix, hash_token, new_token
n = int(sys.argv[-1])
out = {}
with transaction.atomic():
    devices = Device.objects.bulk_create(
        [Device(name=f"bench-{i:05d}", fingerprint=f"bench-{i}", status="active") for i in range(n)])
    creds = []
    for i, d in enumerate(devices):
        token = new_token(DEVICE_PREFIX)
        creds.append(DeviceCredential(device=d, token_hash=hash_token(token), prefix=display_prefix(token)))
        out[i] = [str(d.pk), token]
    DeviceCredential.objects.bulk_create(creds, batch_size=2000)
print(json.dumps(out))
"""


def provision(devices, env, var_dir: Path) -> None:
    """Create the devices and their tokens in one transaction (enrolling 10,000 devices through the
    API is not what this benchmark measures, and takes minutes on a slow disk)."""
    script = var_dir / "provision.py"
    script.write_text(PROVISION)
    out = sh(PY, "manage.py", "shell", "-c", f"import sys; sys.argv.append('{len(devices)}'); "
             f"exec(open('{script}').read())", env=env)
    creds = json.loads(out.strip().splitlines()[-1])
    for d in devices:
        d.device_id, d.token = creds[str(d.index)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL (no db)")
    ap.add_argument("--db", default="edgefleet_bench", help="Database created (dropped first) for the run")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    ap.add_argument("--workers", type=int, default=5, help="gunicorn workers (default 2 × cores + 1)")
    ap.add_argument("--worker-class", default="sync", choices=["sync", "gthread"],
                    help="gunicorn worker class (sync: one request at a time per process)")
    ap.add_argument("--worker-threads", type=int, default=4, help="Threads per gthread worker")
    ap.add_argument("--fleets", default="1000,5000,10000")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--phase-s", type=float, default=60.0, help="Duration of each fleet phase")
    ap.add_argument("--threads", type=int, default=16, help="Simulator connections")
    ap.add_argument("--sat-devices", type=int, default=200)
    ap.add_argument("--sat-batch", type=int, default=100)
    ap.add_argument("--sat-s", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=5.0,
                    help="Unmeasured reports first, so every worker has loaded its code and connections")
    ap.add_argument("--enroll-api", action="store_true",
                    help="Enroll the devices through the API instead of creating them in the database")
    ap.add_argument("--async-commit", action="store_true",
                    help="Run the server with EDGEFLEET_TELEMETRY_SYNCHRONOUS_COMMIT=0")
    ap.add_argument("--out", default=str(REPO / "var" / "bench-ingest.json"))
    args = ap.parse_args()

    fleets = [int(x) for x in args.fleets.split(",") if x]
    db_url = f"{args.pg}/{args.db}"
    var_dir = REPO / "var" / "bench-ingest"
    var_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": args.redis, "EDGEFLEET_VAR_DIR": str(var_dir),
           "EDGEFLEET_ENROLL_RATE": "1000000/min", "LOG_LEVEL": "WARNING", "DEBUG": "0",
           "EDGEFLEET_TELEMETRY_SYNCHRONOUS_COMMIT": "0" if args.async_commit else "1"}
    load0 = os.getloadavg()
    print(f"== database {db_url} (recreated), redis {args.redis}, {args.workers} gunicorn "
          f"{args.worker_class} workers; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)
    psql(f"{args.pg}/postgres", f"DROP DATABASE IF EXISTS {args.db}")
    psql(f"{args.pg}/postgres", f"CREATE DATABASE {args.db}")
    sh(PY, "manage.py", "migrate", "-v0", env=env)
    sh(PY, "manage.py", "shell", "-c",
       "from django.utils import timezone; from fleet.telemetry import partitions; "
       "partitions.ensure_partitions(timezone.now(), 2)", env=env)
    token = sh(PY, "manage.py", "create_enrollment_token", "--auto-accept", env=env).strip().splitlines()[-1]
    sh("redis-cli", "-u", args.redis, "FLUSHDB")

    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    gunicorn = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "gunicorn"), "edgefleet.wsgi", "-b", f"127.0.0.1:{port}",
         "-w", str(args.workers), "-k", args.worker_class,
         *(["--threads", str(args.worker_threads)] if args.worker_class == "gthread" else []),
         "--backlog", "4096", "--timeout", "120"],
        env=env, cwd=REPO, stdout=open(var_dir / "gunicorn.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    results: dict = {"workers": args.workers, "worker_class": args.worker_class, "cores": psutil.cpu_count(),
                     "load_average_start": load0, "fleets": [], "args": vars(args)}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        master = psutil.Process(gunicorn.pid)
        devices = [simulator.VirtualDevice(index=i) for i in range(max(fleets + [args.sat_devices]))]
        t0 = time.monotonic()
        if args.enroll_api:
            failed = simulator.enroll_all(server_url, token, devices, "bench", args.threads, log=print)
            print(f"== enrolled {len(devices) - failed} devices through the API in "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
        else:
            provision(devices, env, var_dir)
            print(f"== provisioned {len(devices)} devices in {time.monotonic() - t0:.0f}s", flush=True)

        # Warm up until every connection gets answers: each worker imports the URLconf and the
        # views on its first request, which takes seconds on a loaded machine.
        warm_until = time.monotonic() + 240
        while args.warmup_s and time.monotonic() < warm_until:
            stats, _ = simulator.run_fleet(server_url, devices[:args.threads * 4], interval=0,
                                           batch=args.batch, duration=args.warmup_s,
                                           threads=args.threads, progress_every=0)
            for d in devices:
                d.pending = []
            if not stats.errors and stats.requests >= 2 * args.threads:
                break
        for n in fleets:
            cpu0, w0 = cpu_seconds(master), time.monotonic()
            stats, elapsed = simulator.run_fleet(server_url, devices[:n], interval=args.interval,
                                                 batch=args.batch, duration=args.phase_s,
                                                 threads=args.threads, progress_every=0)
            cpu = (cpu_seconds(master) - cpu0) / (time.monotonic() - w0)
            row = {"devices": n, **simulator.summary(stats, elapsed), "server_cpu_cores": round(cpu, 2)}
            results["fleets"].append(row)
            print(f"== {n} devices: {json.dumps(row)}", flush=True)

        stored_before = int(psql(db_url, "SELECT count(*) FROM fleet_telemetrysample"))
        cpu0, w0 = cpu_seconds(master), time.monotonic()
        stats, elapsed = simulator.run_fleet(server_url, devices[:args.sat_devices], interval=0,
                                             batch=args.sat_batch, duration=args.sat_s,
                                             threads=args.threads, progress_every=0)
        cpu = (cpu_seconds(master) - cpu0) / (time.monotonic() - w0)
        stored = int(psql(db_url, "SELECT count(*) FROM fleet_telemetrysample")) - stored_before
        sat = {**simulator.summary(stats, elapsed), "stored": stored,
               "stored_per_s": round(stored / elapsed, 1), "server_cpu_cores": round(cpu, 2),
               "stored_equals_acked": stored == stats.samples_acked}
        results["saturation"] = sat
        print(f"== saturation: {json.dumps(sat)}", flush=True)
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)

    copy_rows = max(200_000, results["saturation"]["stored"])
    results["copy_rows_per_s"] = round(copy_ceiling(db_url, copy_rows), 1)
    results["copy_rows"] = copy_rows
    results["load_average_end"] = os.getloadavg()
    print(f"== COPY ceiling: {results['copy_rows_per_s']} rows/s ({copy_rows} rows)", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))

    print("\n| phase | devices | requests | samples acked | samples/s | p50 ms | p99 ms | server CPU (cores) | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["fleets"]:
        print(f"| {args.interval:g} s interval, batch {args.batch} | {r['devices']} | {r['requests']} | "
              f"{r['samples_acked']} | {r['samples_per_s']} | {r['latency_ms']['p50']} | "
              f"{r['latency_ms']['p99']} | {r['server_cpu_cores']} | {r['errors'] or 0} |")
    s = results["saturation"]
    print(f"| saturation, batch {args.sat_batch} | {args.sat_devices} | {s['requests']} | {s['samples_acked']} "
          f"(stored {s['stored']}, equal: {s['stored_equals_acked']}) | {s['stored_per_s']} | "
          f"{s['latency_ms']['p50']} | {s['latency_ms']['p99']} | {s['server_cpu_cores']} | {s['errors'] or 0} |")
    print(f"| PostgreSQL COPY ceiling | - | - | {copy_rows} | {results['copy_rows_per_s']} | - | - | - | - |")
    print(f"\nload average at start {results['load_average_start'][0]:.2f}, "
          f"at end {results['load_average_end'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
