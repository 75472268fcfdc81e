"""CPU per telemetry request, in process, through the WSGI handler gunicorn calls.

Measures the Python CPU time (``time.process_time``) and wall time of N ``POST
/api/v1/agent/telemetry`` requests of one device, as a gunicorn worker would serve them
(``edgefleet.wsgi.application`` with a WSGI environ: every middleware, authentication, ingest),
then optionally profiles them with cProfile. The database and cache are whatever ``DATABASE_URL``
and ``REDIS_URL`` say (PostgreSQL + Redis for figures that mean something); the database must be
migrated. Devices are created (``prof-*``) and their samples deleted at the end.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/edgefleet_ingest REDIS_URL=redis://127.0.0.1:6379/9 \\
      .venv/bin/python bench/ingest/profile_request.py --requests 2000 --batch 3 [--profile 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--devices", type=int, default=50, help="Devices the requests rotate over")
    ap.add_argument("--rounds", type=int, default=5, help="Repeat the timing; the median is reported")
    ap.add_argument("--profile", type=int, default=0, help="Print the top N functions by cumulative time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import django

    django.setup()
    from django.db import connection

    from edgefleet.wsgi import application
    from fleet.models import Device, DeviceCredential, TelemetrySample
    from fleet.secrets import DEVICE_PREFIX, display_prefix, hash_token, new_token
    from fleet.simulator import VirtualDevice


    Device.objects.filter(name__startswith="prof-").delete()
    devices, tokens = [], []
    for i in range(args.devices):
        d = Device.objects.create(name=f"prof-{i:04d}", fingerprint=f"prof-{i}", status="active")
        token = new_token(DEVICE_PREFIX)
        DeviceCredential.objects.create(device=d, token_hash=hash_token(token), prefix=display_prefix(token))
        devices.append(d)
        tokens.append(token)
    sims = [VirtualDevice(index=i) for i in range(args.devices)]
    rng = random.Random(3)

    def one(i: int) -> int:
        k = i % args.devices
        sim = sims[k]
        now = time.time()
        samples = [sim.take_sample(now - (args.batch - 1 - j) * 10, rng) for j in range(args.batch)]
        body = json.dumps({"samples": samples, "dropped": 0, "interval_s": 10, "batch_size": args.batch},
                          separators=(",", ":")).encode()
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/api/v1/agent/telemetry", "SCRIPT_NAME": "",
            "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "HTTP_HOST": "127.0.0.1", "HTTP_AUTHORIZATION": f"Bearer {tokens[k]}",
            "HTTP_ACCEPT": "application/json", "HTTP_CONNECTION": "keep-alive",
        }
        status = []
        chunks = application(environ, lambda s, h, exc=None: status.append(s))
        b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return int(status[0].split()[0])

    for i in range(200):  # warm up: imports, connections, caches
        assert one(i) == 200, one(i)
    cpu_ms, wall_ms = [], []
    n = 200
    for _ in range(args.rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(args.requests):
            code = one(n)
            n += 1
            if code != 200:
                raise SystemExit(f"HTTP {code}")
        cpu_ms.append((time.process_time() - c0) / args.requests * 1000)
        wall_ms.append((time.perf_counter() - w0) / args.requests * 1000)
    result = {
        "vendor": connection.vendor, "batch": args.batch, "requests_per_round": args.requests,
        "cpu_ms_per_request": round(statistics.median(cpu_ms), 3),
        "wall_ms_per_request": round(statistics.median(wall_ms), 3),
        "rounds_cpu_ms": [round(x, 3) for x in cpu_ms],
    }
    if args.profile:
        prof = cProfile.Profile(time.process_time)  # CPU, not time spent waiting
        prof.enable()
        for _ in range(args.requests):
            one(n)
            n += 1
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("cumulative").print_stats(args.profile)
        stats.sort_stats("tottime").print_stats(args.profile // 2)
        print(out.getvalue())
    TelemetrySample.objects.filter(device_id__in=[d.pk for d in devices]).delete()
    Device.objects.filter(name__startswith="prof-").delete()
    print(json.dumps(result) if args.json else
          f"{result['vendor']}, batch {args.batch}: {result['cpu_ms_per_request']} ms CPU, "
          f"{result['wall_ms_per_request']} ms wall per request (median of {args.rounds} rounds "
          f"of {args.requests}: {result['rounds_cpu_ms']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
