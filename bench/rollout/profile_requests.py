"""CPU per agent deployment request, in process, through the WSGI handler gunicorn calls.

Two measures on one server process (``edgefleet.wsgi`` handler with a WSGI environ: every
middleware, authentication, the view), Python CPU time (``time.process_time``) and wall time:

- ``poll``: an unchanged ``GET /api/v1/agent/desired-state`` with the device's ETag (the 304
  that 10,000 devices send every 30 s), ``--polls`` requests, median of ``--rounds`` rounds;
- ``install``: what one device costs the server to install a new deployment: the changed
  desired state (200) and its batch of four reports (downloading, verifying, checking,
  installed with a benchmark; the installed one re-places the device), over ``--devices``
  devices of one deployment.

The database and cache are whatever ``DATABASE_URL`` and ``REDIS_URL`` say (PostgreSQL + Redis
for figures that mean something); the database is migrated first. Objects are created with a
unique tag and left behind: use a scratch database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/edgefleet_prof REDIS_URL=redis://127.0.0.1:6379/9 \\
      .venv/bin/python bench/rollout/profile_requests.py [--profile 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edgefleet.settings")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("ALLOWED_HOSTS", "*")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--devices", type=int, default=300, help="devices installing (one request pair each)")
    ap.add_argument("--profile", type=int, default=0, help="print the top N cProfile lines of the installs")
    args = ap.parse_args()

    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.management import call_command

    from compression import signing, storage
    from compression.models import AIModel, ModelVersion, Variant, VariantStatus
    from fleet import desired_state, rollouts
    from fleet.models import Deployment, Device, DeviceCredential
    from fleet.secrets import DEVICE_PREFIX, display_prefix, hash_token, new_token
    from tests.compression.engine.models import build_digits_mlp

    call_command("migrate", verbosity=0)
    tag = f"prof{time.time_ns()}"
    inv = {"status": "active", "cpu_model": "Cortex-A72", "arch": "aarch64", "memory_total_bytes": 4 * 1024**3,
           "disk_total_bytes": 32 * 1024**3, "execution_providers": ["CPUExecutionProvider"]}
    n = args.devices + 1
    devices = Device.objects.bulk_create([Device(name=f"{tag}-{i}", fingerprint=f"{tag}-{i}", labels={"site": tag},
                                                 **inv) for i in range(n)])
    tokens = []
    for d in devices:
        t = new_token(DEVICE_PREFIX)
        tokens.append(t)
        DeviceCredential.objects.create(device=d, token_hash=hash_token(t), prefix=display_prefix(t))
    app = WSGIHandler()

    def call(method: str, path: str, token: str, body=None, etag=None) -> tuple[str, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "localhost", "SERVER_PORT": "8000",
                   "wsgi.input": io.BytesIO(data), "wsgi.url_scheme": "http", "QUERY_STRING": "",
                   "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "application/json",
                   "HTTP_AUTHORIZATION": f"Bearer {token}", "REMOTE_ADDR": "127.0.0.1"}
        if etag:
            environ["HTTP_IF_NONE_MATCH"] = etag
        status = []
        out = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        return status[0], out

    # 1. Unchanged polls (nothing deployed yet: generation 0).
    etag = desired_state.etag(devices[0], 0)
    assert call("GET", "/api/v1/agent/desired-state", tokens[0], etag=etag)[0].startswith("304")
    rounds = []
    for _ in range(args.rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.polls):
            call("GET", "/api/v1/agent/desired-state", tokens[0], etag=etag)
        rounds.append(((time.process_time() - cpu) / args.polls * 1000, (time.perf_counter() - wall) / args.polls * 1000))
    poll = {"cpu_ms": round(statistics.median(r[0] for r in rounds), 3),
            "wall_ms": round(statistics.median(r[1] for r in rounds), 3), "rounds": args.rounds, "polls": args.polls}
    print(f"poll (304): {json.dumps(poll)}", flush=True)

    # 2. Installs: one deployment of the digits MLP to every device.
    model = AIModel.objects.create(name=tag[:50])
    s = storage.place(storage.receive("models", io.BytesIO(build_digits_mlp((16,)).SerializeToString())), ".onnx")
    v = ModelVersion.objects.create(model=model, version=1, sha256=s.sha256, size_bytes=s.size_bytes, file=s.relpath)
    Variant.objects.create(source=v, recipe="original", status=VariantStatus.ACCEPTED, sha256=s.sha256,
                           size_bytes=s.size_bytes, file=s.relpath, signature=signing.sign(s.sha256),
                           latency_ms={"p50": 1.0}, fidelity={"cosine_min": 0.9999})
    dep = Deployment.objects.create(model=model, target_kind="labels", target_labels={"site": tag},
                                    phases=["100%"], soak_seconds=0)
    t0 = time.perf_counter()
    rollouts.start(None, dep)
    release_s = time.perf_counter() - t0

    def install(i: int) -> None:
        status, out = call("GET", "/api/v1/agent/desired-state", tokens[i])
        assert status.startswith("200"), status
        entry = json.loads(out)["models"][0]
        vid = entry["variant"]["variant_id"]
        reports = [{"report_id": f"{entry['assignment_id']}-{st}", "model": entry["model"], "variant_id": vid,
                    "state": st} for st in ("downloading", "verifying", "checking")]
        reports.append({"report_id": f"{entry['assignment_id']}-installed", "model": entry["model"],
                        "variant_id": vid, "state": "installed", "benchmark": {"p50_ms": 2.0, "p95_ms": 3.0}})
        status, out = call("POST", "/api/v1/agent/reports", tokens[i], {"reports": reports})
        assert status.startswith("200") and all(r["accepted"] for r in json.loads(out)["results"]), out

    install(0)  # warm
    profiler = cProfile.Profile() if args.profile else None
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    for i in range(1, n):
        install(i)
    if profiler:
        profiler.disable()
    inst = {"cpu_ms": round((time.process_time() - cpu) / args.devices * 1000, 2),
            "wall_ms": round((time.perf_counter() - wall) / args.devices * 1000, 2), "devices": args.devices,
            "release_s": round(release_s, 2)}
    print(f"install (200 + 4 reports): {json.dumps(inst)}", flush=True)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
