"""Deployments benchmark on the real stack (gunicorn, PostgreSQL, Redis) on loopback.

1. poll: N simulated devices (``fleet/rollout_sim.py``) poll ``GET /api/v1/agent/desired-state``
   with their ETag: first at the fleet's nominal rate (every ``--interval-nominal`` s, 30 s like
   the agent), then back to back (saturation). Requests/s, p50/p99, share of 304.
2. converge: a new deployment (phases 1 / 10 % / 50 % / 100 %, gate 100 %, soak ``--soak`` s) to
   all N devices, which poll every ``--interval`` s and report like agents; a "beat" process runs
   ``rollouts.advance`` every ``--beat`` s. Time to each phase and to 100 %, bounded by
   ``--converge-s``.
3. download: a 100 MB artifact of random bytes registered as a signed variant and assigned to one
   device: the agent's downloader (``agents.artifacts.download`` in a child process, sampled RSS)
   against ``curl`` on the same URL, alternating, ``--dl-runs`` times each; then the real agent
   daemon (``edgefleet-agent run``) installing it, its RSS sampled while the file arrives.

Usage (see README.md): .venv/bin/python bench/rollout/run.py [--devices 10000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import cpu_seconds, free_port, sh  # noqa: E402
from fleet import rollout_sim  # noqa: E402  (plain Python, no Django)

PY = str(REPO / ".venv" / "bin" / "python")
MB = 1024 * 1024


def manage_shell(code: str, env: dict, *args: str) -> dict:
    """Run ``code`` in ``manage.py shell``; its last stdout line is JSON."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, dir=env["EDGEFLEET_VAR_DIR"]) as fh:
        fh.write(code)
    argv = ", ".join(repr(a) for a in args)
    out = sh(PY, "manage.py", "shell", "-c", f"import sys; sys.argv[1:] = [{argv}]; exec(open({fh.name!r}).read())",
             env=env)
    os.remove(fh.name)
    return json.loads(out.strip().splitlines()[-1])


PROVISION = r"""
import io, json, os, sys
from django.db import transaction
from compression import signing, storage
from compression.models import AIModel, ModelVersion, Variant, VariantStatus
from fleet import desired_state, rollouts
from fleet.models import Deployment, Device, DeviceCredential
from fleet.secrets import DEVICE_PREFIX, display_prefix, hash_token, new_token
from tests.compression.engine.models import build_digits_mlp

n, blob_mb = int(sys.argv[1]), int(sys.argv[2])
out = {"devices": {}}

def store(kind, data):
    return storage.place(storage.receive(kind, io.BytesIO(data)), ".onnx")

def variant(version, s, recipe="original"):
    return Variant.objects.create(source=version, recipe=recipe, status=VariantStatus.ACCEPTED, sha256=s.sha256,
                                  size_bytes=s.size_bytes, file=s.relpath, signature=signing.sign(s.sha256),
                                  latency_ms={"p50": 1.0}, fidelity={"cosine_min": 0.9999})

def tokens(devices):
    creds, plain = [], []
    for d in devices:
        token = new_token(DEVICE_PREFIX)
        creds.append(DeviceCredential(device=d, token_hash=hash_token(token), prefix=display_prefix(token)))
        # The ETag an agent that polled before holds (nothing deployed yet: generation 0).
        plain.append([str(d.pk), token, desired_state.etag(d, 0)])
    DeviceCredential.objects.bulk_create(creds, batch_size=2000)
    return plain

inv = dict(status="active", cpu_model="Cortex-A72", arch="aarch64", memory_total_bytes=4 * 1024**3,
           disk_total_bytes=32 * 1024**3, execution_providers=["CPUExecutionProvider"])
with transaction.atomic():
    devices = Device.objects.bulk_create(
        [Device(name=f"bench-{i:05d}", fingerprint=f"bench-{i}", labels={"site": "bench"}, **inv) for i in range(n)],
        batch_size=2000)
    out["devices"] = tokens(devices)
    # The model the fleet converges on: the digits MLP (a real ONNX file, so the health check is real).
    model = AIModel.objects.create(name="digits")
    s = store("models", build_digits_mlp((16,)).SerializeToString())
    v = ModelVersion.objects.create(model=model, version=1, sha256=s.sha256, size_bytes=s.size_bytes, file=s.relpath)
    variant(v, s)
    out["model"] = "digits"

    # The download artifact: random bytes, registered as a signed variant of a model "blob" and
    # deployed (pinned) to one device outside the fleet. Not a model: its health check cannot
    # be built (recorded as such) and the agent's child check refuses it, after the download.
    dl = Device.objects.create(name="bench-download", fingerprint="bench-download", **inv)
    [[dl_id, dl_token, _]] = tokens([dl])
    blob = AIModel.objects.create(name="blob")
    small = store("models", os.urandom(4096))
    bv = ModelVersion.objects.create(model=blob, version=1, sha256=small.sha256, size_bytes=small.size_bytes,
                                     file=small.relpath)
    chunks = (os.urandom(1024 * 1024) for _ in range(blob_mb))
    big = storage.place(storage.receive("variants", chunks), ".onnx")
    bvar = variant(bv, big)
d = Deployment.objects.create(model=blob, target_kind="devices", variant_policy="pinned", pinned_variant=bvar,
                              phases=["100%"], soak_seconds=0)
d.target_devices.set([dl])
rollouts.start(None, d)
out["download"] = {"device_id": dl_id, "token": dl_token, "variant_id": str(bvar.pk), "sha256": big.sha256,
                   "size": big.size_bytes, "url": f"/api/v1/agent/artifacts/{bvar.pk}",
                   "path": str(storage.path_of(big.relpath))}
print(json.dumps(out))
"""

BEAT = r"""
import json, sys, time
from django.utils import timezone
from fleet import rollouts
from fleet.models import Deployment, DeploymentState
soak, beat, limit, ready = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
from compression.models import AIModel
d = Deployment.objects.create(model=AIModel.objects.get(name="digits"), target_kind="labels",
                              target_labels={"site": "bench"}, phases=[1, "10%", "50%", "100%"],
                              success_share=1.0, soak_seconds=int(soak), error_threshold="1%")
t0 = time.monotonic()
d = rollouts.start(None, d)
timeline = [{"t": round(time.monotonic() - t0, 2), "event": "started",
             "released": d.assignments.filter(current=True).count()}]
open(ready, "w").write("started")
state = "active"
while time.monotonic() - t0 < limit:
    time.sleep(beat)
    tick = time.monotonic()
    step = rollouts.advance(d.pk)
    if step.startswith("phase") or step in ("completed", "paused"):
        s = rollouts.stats(Deployment.objects.get(pk=d.pk))
        timeline.append({"t": round(tick - t0, 2), "event": step, "installed": s["installed"],
                         "released": s["released"], "advance_ms": round((time.monotonic() - tick) * 1000, 1)})
    if step in ("completed", "paused"):
        state = step
        break
d.refresh_from_db()
s = rollouts.stats(d, released_only=False)
print(json.dumps({"state": d.state, "elapsed_s": round(time.monotonic() - t0, 2), "timeline": timeline,
                  "counts": s["counts"], "deployment": str(d.pk)}))
"""


# --- polling in worker processes (the client must not be the bottleneck on its own GIL) ---------


def _poll_worker(args):
    server, devices, interval, duration, threads, seed, stop_file = args
    stop = (lambda: os.path.exists(stop_file)) if stop_file else None
    stats, elapsed = rollout_sim.run_polling(server, devices, interval=interval, duration=duration,
                                             threads=threads, seed=seed, stop=stop)
    return stats, elapsed, devices


def poll_fleet(pool, server, devices, *, procs, interval, duration, threads, stop_file=None):
    slices = [devices[i::procs] for i in range(procs)]
    t0 = time.monotonic()
    results = pool.map(_poll_worker, [(server, s, interval, duration, threads, n, stop_file)
                                      for n, s in enumerate(slices)])
    elapsed = time.monotonic() - t0
    total = rollout_sim.PollStats()
    by_index = {}
    for stats, _, devs in results:
        total.merge(stats)
        by_index.update({d.index: d for d in devs})
    devices[:] = [by_index[d.index] for d in devices]  # keep the ETags and what they run
    return total, elapsed


def _floor_worker(args):
    """Back to back ``GET /healthz`` (Django and its middleware, no database) on ``threads``
    keep-alive connections: the floor a desired-state poll is compared with."""
    server, duration, threads = args
    lat, lock = [], threading.Lock()
    deadline = time.monotonic() + duration

    def work():
        transport, mine = rollout_sim.HttpTransport(server), []
        while time.monotonic() < deadline:
            t = time.perf_counter()
            status, _, _ = transport.request("GET", "/healthz", token="")
            assert status == 200, status
            mine.append(time.perf_counter() - t)
        transport.close()
        with lock:
            lat.extend(mine)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat


def floor_baseline(pool, server, *, procs, threads, duration) -> dict:
    t0 = time.monotonic()
    lat = [x for part in pool.map(_floor_worker, [(server, duration, threads)] * procs) for x in part]
    elapsed = time.monotonic() - t0
    return {"requests": len(lat), "requests_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(rollout_sim.percentile(lat, 50) * 1000, 2),
            "p99_ms": round(rollout_sim.percentile(lat, 99) * 1000, 2)}


# --- download -----------------------------------------------------------------------------------

DOWNLOADER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from agents import artifacts
if os.environ.get("BENCH_NO_FSYNC"):  # diagnostic: what the final fsync costs
    os.fsync = lambda fd: None
server, url, token, part, sha, size = sys.argv[2:8]
t0 = time.perf_counter()
artifacts.download(server, url, token, part, sha256=sha, size=int(size))
print(time.perf_counter() - t0)
"""


def sample_rss(proc: subprocess.Popen, part: Path, every: float = 0.01) -> list[int]:
    """RSS of ``proc`` every ``every`` s while bytes arrive in ``part`` (not while it starts up)."""
    p = psutil.Process(proc.pid)
    values = []
    while proc.poll() is None:
        try:
            rss = p.memory_info().rss
            if part.exists() and part.stat().st_size > 0:
                values.append(rss)
        except (psutil.NoSuchProcess, FileNotFoundError):
            break
        time.sleep(every)
    return values


def rss_summary(values: list[int]) -> dict:
    return {"samples": len(values), "min_mib": round(min(values) / MB, 1),
            "median_mib": round(statistics.median(values) / MB, 1), "max_mib": round(max(values) / MB, 1)}


def download_bench(server: str, dl: dict, runs: int, work: Path) -> dict:
    part = work / "agent.part"
    curl_out = work / "curl.out"
    agent_runs, nofsync_runs, curl_runs, rss_all = [], [], [], []
    for _ in range(runs):
        for no_fsync in (False, True):
            part.unlink(missing_ok=True)
            env = {**os.environ, "BENCH_NO_FSYNC": "1" if no_fsync else ""}
            proc = subprocess.Popen([PY, "-c", DOWNLOADER, str(REPO), server, dl["url"], dl["token"], str(part),
                                     dl["sha256"], str(dl["size"])], stdout=subprocess.PIPE, text=True, env=env)
            rss = sample_rss(proc, part)
            out, _ = proc.communicate()
            assert proc.returncode == 0 and part.stat().st_size == dl["size"], out
            (nofsync_runs if no_fsync else agent_runs).append(float(out.strip()))
            if not no_fsync:
                rss_all.append(rss_summary(rss))
            part.unlink()
        curl_out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        sh("curl", "-sS", "--fail", "-o", str(curl_out), "-H", f"Authorization: Bearer {dl['token']}",
           f"{server}{dl['url']}")
        curl_runs.append(time.perf_counter() - t0)
        assert curl_out.stat().st_size == dl["size"]
        curl_out.unlink()
    mb = dl["size"] / MB
    return {"size_mib": round(mb, 1), "runs": runs,
            "agent_s": [round(x, 3) for x in agent_runs], "curl_s": [round(x, 3) for x in curl_runs],
            "agent_no_fsync_s": [round(x, 3) for x in nofsync_runs],
            "agent_mib_s_median": round(mb / statistics.median(agent_runs), 1),
            "agent_no_fsync_mib_s_median": round(mb / statistics.median(nofsync_runs), 1),
            "curl_mib_s_median": round(mb / statistics.median(curl_runs), 1),
            "agent_rss_per_run": rss_all}


def daemon_download(server: str, dl: dict, work: Path, timeout: float = 180) -> dict:
    """The real daemon installs the 100 MB variant: RSS while the .part file grows."""
    sys.path.insert(0, str(REPO))
    from agents import state as agent_state

    state_dir = work / "daemon-state"
    agent_state.save_credentials(str(state_dir), {
        "server": server, "device_id": dl["device_id"], "device_token": dl["token"], "status": "active",
        "name": "bench-download", "fingerprint": "bench-download", "config": {"telemetry_interval_s": 10},
        "enrolled_at": time.time()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env.update({"PYTHONPATH": str(REPO), "EDGEFLEET_AGENT_CONFIG": "", "EDGEFLEET_AGENT_DEPLOY_POLL": "1"})
    proc = subprocess.Popen([PY, "-m", "agents", "run", "--state-dir", str(state_dir)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = psutil.Process(proc.pid)
    part = state_dir / "models" / ".downloads" / f"{dl['sha256']}.part"
    before, during = [], []
    t_first = t_done = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            rss = p.memory_info().rss
            size = part.stat().st_size if part.exists() else None
            if size is None and t_first is None:
                before.append(rss)
            elif size is not None:
                t_first = t_first or time.perf_counter()
                during.append(rss)
                if size >= dl["size"]:
                    t_done = time.perf_counter()
                    break
            elif t_first is not None:  # renamed away: complete
                t_done = time.perf_counter()
                break
            time.sleep(0.01)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    if not during or t_done is None:
        return {"error": "the daemon did not download the artifact in time"}
    return {"idle_before": rss_summary(before) if before else None, "downloading": rss_summary(during),
            "seconds": round(t_done - t_first, 2), "mib_s": round(dl["size"] / MB / (t_done - t_first), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL (no db)")
    ap.add_argument("--db", default="edgefleet_rollout_bench", help="Database created (dropped first)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--var", default="/tmp/rollout-var/bench", help="EDGEFLEET_VAR_DIR of the run")
    ap.add_argument("--worker-class", default="gthread", choices=["sync", "gthread"],
                    help="gunicorn worker class (docker-compose.yml runs gthread 5 x 4)")
    ap.add_argument("--workers", type=int, default=5, help="gunicorn workers")
    ap.add_argument("--worker-threads", type=int, default=4, help="threads per gthread worker")
    ap.add_argument("--seed-etags", action=argparse.BooleanOptionalAction, default=True,
                    help="devices start with the ETag of their (empty) desired state, as agents that "
                         "polled before; only --first-contact of them fetch it first")
    ap.add_argument("--first-contact", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--procs", type=int, default=2, help="load generator processes")
    ap.add_argument("--threads", type=int, default=8, help="connections per load generator process")
    ap.add_argument("--interval-nominal", type=float, default=30.0, help="poll interval of the nominal phase")
    ap.add_argument("--poll-s", type=float, default=60.0, help="duration of the nominal phase")
    ap.add_argument("--sat-s", type=float, default=20.0, help="duration of the saturation phase")
    ap.add_argument("--interval", type=float, default=10.0, help="poll interval while converging")
    ap.add_argument("--soak", type=float, default=10.0)
    ap.add_argument("--beat", type=float, default=5.0, help="seconds between rollouts.advance calls")
    ap.add_argument("--converge-s", type=float, default=420.0, help="upper bound of the convergence phase")
    ap.add_argument("--blob-mb", type=int, default=100)
    ap.add_argument("--dl-runs", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma list of phases to skip: poll,converge,download,daemon")
    ap.add_argument("--out", default="/tmp/rollout-var/bench-rollout.json")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    var_dir = Path(args.var)
    var_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"{args.pg}/{args.db}"
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": args.redis, "EDGEFLEET_VAR_DIR": str(var_dir),
           "LOG_LEVEL": "WARNING", "DEBUG": "0"}
    results: dict = {"load_before": os.getloadavg(), "cores": psutil.cpu_count(), "args": vars(args)}
    print(f"== load average {results['load_before']}, {results['cores']} cores", flush=True)
    sh("psql", f"{args.pg}/postgres", "-qc", f"DROP DATABASE IF EXISTS {args.db}")
    sh("psql", f"{args.pg}/postgres", "-qc", f"CREATE DATABASE {args.db}")
    sh(PY, "manage.py", "migrate", "-v0", env=env)
    sh("redis-cli", "-u", args.redis, "FLUSHDB")
    t0 = time.monotonic()
    prov = manage_shell(PROVISION, env, str(args.devices), str(args.blob_mb))
    print(f"== provisioned {args.devices} devices and a {args.blob_mb} MiB artifact in "
          f"{time.monotonic() - t0:.0f}s", flush=True)
    devices = [rollout_sim.SimDevice(index=i, device_id=did, token=tok, etag=tag if args.seed_etags else None)
               for i, (did, tok, tag) in enumerate(prov["devices"])]

    port = free_port()
    server = f"http://127.0.0.1:{port}"
    gunicorn = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "gunicorn"), "edgefleet.wsgi", "-b", f"127.0.0.1:{port}",
         "-w", str(args.workers), "-k", args.worker_class, "--threads", str(args.worker_threads),
         "--backlog", "4096"],
        env=env, cwd=REPO, stdout=open(var_dir / "gunicorn.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    ctx = mp.get_context("fork")
    pool = ctx.Pool(args.procs)
    try:
        for _ in range(150):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(2)
        master = psutil.Process(gunicorn.pid)

        if "poll" not in skip:
            # First contact: devices without an ETag fetch their (empty) desired state once, back
            # to back (--first-contact devices when ETags are seeded: the cost of a 200).
            fresh = devices if not args.seed_etags else devices[:args.first_contact]
            for d in fresh:
                d.etag = None
            first, elapsed = poll_fleet(pool, server, fresh, procs=args.procs, interval=-1, duration=300,
                                        threads=args.threads)
            if args.seed_etags:
                devices[:args.first_contact] = fresh
            results["first_contact"] = first.summary(elapsed)
            print(f"== first contact: {json.dumps(results['first_contact'])}", flush=True)
            for name, interval, duration in (("nominal", args.interval_nominal, args.poll_s),
                                             ("saturation", 0.0, args.sat_s)):
                cpu0, w0 = cpu_seconds(master), time.monotonic()
                stats, elapsed = poll_fleet(pool, server, devices, procs=args.procs, interval=interval,
                                            duration=duration, threads=args.threads)
                row = {**stats.summary(elapsed), "seconds": round(elapsed, 1),
                       "server_cpu_cores": round((cpu_seconds(master) - cpu0) / (time.monotonic() - w0), 2)}
                if interval:
                    row["offered_per_s"] = round(len(devices) / interval, 1)
                results[name] = row
                print(f"== {name}: {json.dumps(row)}", flush=True)
            # Baseline in the same run, same server and connections: the cheapest request it
            # answers (GET /healthz: the same middleware, no database), back to back.
            cpu0, w0 = cpu_seconds(master), time.monotonic()
            row = floor_baseline(pool, server, procs=args.procs, threads=args.threads, duration=args.sat_s)
            row["server_cpu_cores"] = round((cpu_seconds(master) - cpu0) / (time.monotonic() - w0), 2)
            results["floor_healthz"] = row
            print(f"== floor (GET /healthz, back to back): {json.dumps(row)}", flush=True)

        if "converge" not in skip:
            stop_file = str(var_dir / "converge.stop")
            ready = var_dir / "converge.started"
            for f in (stop_file, ready):
                Path(f).unlink(missing_ok=True)
            beat = subprocess.Popen(
                [PY, "manage.py", "shell", "-c",
                 f"import sys; sys.argv[1:] = {[str(args.soak), str(args.beat), str(args.converge_s), str(ready)]!r}; "
                 f"exec({BEAT!r})"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while not ready.exists() and beat.poll() is None:
                time.sleep(0.1)

            def watch():
                out, err = beat.communicate()
                Path(stop_file).write_text("done")
                return out, err

            box = {}
            watcher = threading.Thread(target=lambda: box.update(zip(("out", "err"), watch(), strict=True)), daemon=True)
            watcher.start()
            cpu0, w0 = cpu_seconds(master), time.monotonic()
            stats, elapsed = poll_fleet(pool, server, devices, procs=args.procs, interval=args.interval,
                                        duration=args.converge_s + 30, threads=args.threads, stop_file=stop_file)
            watcher.join(timeout=60)
            try:
                timeline = json.loads(box.get("out", "").strip().splitlines()[-1])
            except (ValueError, IndexError):
                timeline = {"error": box.get("err", "")[-2000:]}
            results["converge"] = {"beat": timeline, "polling": stats.summary(elapsed),
                                   "server_cpu_cores": round((cpu_seconds(master) - cpu0) / (time.monotonic() - w0), 2),
                                   "devices_running_it": sum(1 for d in devices if d.running.get("digits"))}
            print(f"== converge: {json.dumps(results['converge'])}", flush=True)

        if "download" not in skip:
            results["download"] = download_bench(server, prov["download"], args.dl_runs, var_dir)
            print(f"== download: {json.dumps(results['download'])}", flush=True)
        if "daemon" not in skip:
            results["daemon_download"] = daemon_download(server, prov["download"], var_dir)
            print(f"== daemon download: {json.dumps(results['daemon_download'])}", flush=True)
    finally:
        pool.terminate()
        gunicorn.terminate()
        gunicorn.wait(timeout=30)
    results["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"== results in {args.out}; load average after {results['load_after']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
