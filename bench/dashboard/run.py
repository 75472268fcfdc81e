#!/usr/bin/env python
"""Dashboard benchmark: server time and query counts of the overview, device list and device
detail pages with a fleet of N devices and a week of rollups in PostgreSQL.

Measured in-process with Django's test client (the whole request: middleware, session, view,
template), after warm-up, against ``/healthz`` measured in the same run as the baseline. See
README.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[100, 10_000],
                   help="fleet sizes to measure, each on freshly generated data (default: 100 10000)")
    p.add_argument("--requests", type=int, default=50, help="timed requests per page (default 50)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--minute-devices", type=int, default=1000,
                   help="devices with 24 h of 1-minute rollups; the others have the last 15 minutes")
    p.add_argument("--pg", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432"),
                   help="PostgreSQL server URL without a database name")
    p.add_argument("--db", default="edgefleet_dash_bench", help="database to DROP and recreate")
    p.add_argument("--redis", default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13"))
    p.add_argument("--json", default=str(ROOT / "var" / "bench-dashboard.json"))
    p.add_argument("--reuse", action="store_true",
                   help="measure the data already in --db (the last size generated) without regenerating")
    return p.parse_args()


def recreate_database(pg: str, db: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')


# --- data ---------------------------------------------------------------------------------------

METRIC_SQL = {  # one row's value of each metric (avg); min and max are 0.8x and 1.2x of it
    "cpu_percent": "(15 + 50 * random())",
    "load_1m": "(2 * random())",
    "mem_used_bytes": "(1.5e9 + 1e9 * random())",
    "mem_total_bytes": "4294967296",
    "swap_used_bytes": "0",
    "swap_total_bytes": "0",
    "disk_used_bytes": "(1e10 + 1e9 * random())",
    "disk_total_bytes": "3.2e10",
    "net_rx_bytes_per_s": "(2e4 * random())",
    "net_tx_bytes_per_s": "(5e3 * random())",
    "temperature_c": "(40 + 20 * random())",
    "agent_rss_bytes": "(3e7 + 1e6 * random())",
}


def rollup_select(model, samples: int) -> tuple[str, str]:
    """(column list, select list) generating every column of a rollup row in SQL."""
    cols, exprs = [], []
    for f in model._meta.concrete_fields:
        if f.primary_key and f.name == "id":
            continue
        cols.append(f'"{f.column}"')
        if f.name == "device":
            exprs.append("d.id")
        elif f.name == "bucket":
            exprs.append("b")
        elif f.name == "count" or f.name.endswith("_count"):
            exprs.append(str(samples))
        else:
            metric, _, agg = f.name.rpartition("_")
            base = METRIC_SQL.get(metric)
            if base is None:
                exprs.append("NULL" if f.null else "0")
            else:
                exprs.append({"min": f"0.8 * {base}", "max": f"1.2 * {base}"}.get(agg, base))
    return ", ".join(cols), ", ".join(exprs)


def populate(n: int, minute_devices: int) -> dict:
    """N devices (labels, presence) and their rollups: 7 days of 1-hour buckets for all, 24 h
    of 1-minute buckets for the first ``minute_devices``, the last 15 minutes for the rest."""
    import random
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from fleet.models import Device, DeviceStatus
    from fleet.models.telemetry import DevicePresence, Rollup1h, Rollup1m
    from fleet.telemetry.partitions import ensure_partitions

    rng = random.Random(n)
    now = timezone.now()
    timings = {}
    t = time.perf_counter()
    devices = []
    for i in range(n):
        status = (DeviceStatus.PENDING if i % 50 == 49 else DeviceStatus.DISABLED if i % 100 == 98
                  else DeviceStatus.ACTIVE)
        devices.append(Device(
            name=f"edge-{i:05d}", fingerprint=f"fp-{i:05d}", status=status,
            labels={"site": f"site-{i % 20}", "line": str(i % 7)}, hostname=f"edge-{i:05d}",
            arch="aarch64", os="Debian 12", cpu_cores=4, cpu_model="Cortex-A72",
            memory_total_bytes=4 << 30, disk_total_bytes=32 << 30, agent_version="0.1.0",
            last_seen=now - timedelta(seconds=rng.randint(0, 60)) if status == DeviceStatus.ACTIVE else None,
            inventory={"hostname": f"edge-{i:05d}", "cpu_cores": 4, "packages": ["x"] * 20},
        ))
    Device.objects.bulk_create(devices, batch_size=2000)
    presence = []
    for i, d in enumerate(devices):
        if d.status == DeviceStatus.ACTIVE:
            state = "offline" if i % 20 == 7 else "late" if i % 20 == 3 else "online"
            presence.append(DevicePresence(device=d, state=state, since=now, evaluated_at=now,
                                           report_period_s=30))
    DevicePresence.objects.bulk_create(presence, batch_size=2000)
    timings["devices_s"] = time.perf_counter() - t

    ensure_partitions(now, days_ahead=1, days_back=2)
    hour = now.replace(minute=0, second=0, microsecond=0)
    minute = now.replace(second=0, microsecond=0)
    with connection.cursor() as cur:
        t = time.perf_counter()
        cols, exprs = rollup_select(Rollup1h, 360)
        cur.execute(
            f'INSERT INTO "{Rollup1h._meta.db_table}" ({cols}) SELECT {exprs} FROM fleet_device d '
            f"CROSS JOIN generate_series(%s::timestamptz - interval '167 hours', %s::timestamptz, "
            f"interval '1 hour') b WHERE d.status = 'active' ORDER BY b, d.id", [hour, hour])
        timings["rollup_1h_rows"] = cur.rowcount
        timings["rollup_1h_s"] = time.perf_counter() - t
        t = time.perf_counter()
        cols, exprs = rollup_select(Rollup1m, 6)
        cur.execute(
            f'INSERT INTO "{Rollup1m._meta.db_table}" ({cols}) SELECT {exprs} FROM '
            f"(SELECT id, row_number() OVER (ORDER BY name) AS k FROM fleet_device WHERE status = 'active') d "
            f"CROSS JOIN generate_series(%s::timestamptz - interval '1439 minutes', %s::timestamptz, "
            f"interval '1 minute') b WHERE d.k <= %s OR b > %s::timestamptz - interval '15 minutes' "
            # Time order, as the rollup task writes them (the BRIN index on bucket relies on it).
            f"ORDER BY b, d.id",
            [minute, minute, minute_devices, minute])
        timings["rollup_1m_rows"] = cur.rowcount
        timings["rollup_1m_s"] = time.perf_counter() - t
        # As autovacuum would: summarise the BRIN ranges (unsummarised ranges are read whole).
        cur.execute("VACUUM ANALYZE")
    return timings


# --- measuring ----------------------------------------------------------------------------------


def measure(client, url: str, requests: int, warmup: int) -> dict:
    from django.db import connection

    for _ in range(warmup):
        resp = client.get(url)
        assert resp.status_code == 200, (url, resp.status_code, resp.content[:500])
    captured = []

    def record(execute, sql, params, many, context):  # counts what the request really sends
        t = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            captured.append({"sql": sql, "ms": (time.perf_counter() - t) * 1000})

    with connection.execute_wrapper(record):
        client.get(url)
    times, cpu = [], []
    for _ in range(requests):
        t, c = time.perf_counter(), time.process_time()
        resp = client.get(url)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        assert resp.status_code == 200
    times.sort()
    return {"url": url, "queries": len(captured), "p50_ms": statistics.median(times),
            "cpu_p50_ms": statistics.median(cpu), "db_ms": sum(q["ms"] for q in captured),
            "p95_ms": times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)],
            "sql": [(round(q["ms"], 1), q["sql"][:300]) for q in captured]}


def pages(device_pk) -> list[tuple[str, str]]:
    return [
        ("baseline /healthz", "/healthz"),
        ("overview", "/"),
        ("device list", "/devices/"),
        ("device list, filtered + sorted", "/devices/?presence=online&label=site%3Dsite-3&sort=-last_seen"),
        ("device list, search, page 3", "/devices/?q=edge-0&page=3"),
        ("device detail", f"/devices/{device_pk}/"),
        ("device chart data 1 h", f"/devices/{device_pk}/metrics/?range=1h"),
        ("device chart data 24 h", f"/devices/{device_pk}/metrics/?range=24h"),
        ("device chart data 7 d", f"/devices/{device_pk}/metrics/?range=7d"),
    ]


def main() -> None:
    args = parse_args()
    os.environ["DATABASE_URL"] = f"{args.pg}/{args.db}"
    os.environ["REDIS_URL"] = args.redis
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")
    if not args.reuse:
        recreate_database(args.pg, args.db)

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from fleet.models import Device
    from fleet.roles import role_group

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    user.groups.add(role_group("viewer"))
    client = Client()
    client.force_login(user)

    runs = []
    for n in [Device.objects.count()] if args.reuse else args.devices:
        if args.reuse:
            data = {"populate_s": 0, "rollup_1h_rows": "(kept)", "rollup_1m_rows": "(kept)"}
        else:
            with connection.cursor() as cur:
                cur.execute("TRUNCATE fleet_device CASCADE")
            t = time.perf_counter()
            data = populate(n, args.minute_devices)
            data["populate_s"] = time.perf_counter() - t
        device = Device.objects.filter(status="active").order_by("name").first()
        print(f"\n{n} devices: generated in {data['populate_s']:.1f} s "
              f"({data['rollup_1h_rows']} 1 h rollups, {data['rollup_1m_rows']} 1 min rollups)", flush=True)
        results = {}
        for name, url in pages(device.pk):
            results[name] = measure(client, url, args.requests, args.warmup)
            r = results[name]
            print(f"  {name:32s} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                  f"python cpu p50 {r['cpu_p50_ms']:6.1f} ms  {r['queries']:3d} queries ({r['db_ms']:.1f} ms)",
                  flush=True)
        runs.append({"devices": n, "data": data, "pages": results})

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(runs, indent=2, default=str))
    print(f"\nresults: {args.json}\n")
    sizes = [r["devices"] for r in runs]
    head = "| page | " + " | ".join(f"{n:,} devices: p50 / p95 ms | queries" for n in sizes) + " |"
    print(head)
    print("|---|" + "---:|---:|" * len(sizes))
    for name in runs[0]["pages"]:
        cells = []
        for r in runs:
            p = r["pages"][name]
            cells.append(f"{p['p50_ms']:.1f} / {p['p95_ms']:.1f} | {p['queries']}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
