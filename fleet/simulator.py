"""Virtual agents for demos, tests and benchmarks (``manage.py simulate_fleet``).

Each virtual device speaks agent protocol v1 like ``edgefleet-agent``: it enrolls with an
enrollment token (name and fingerprint ``sim-<i>``), reports its inventory, then samples every
interval and sends batches of ``batch`` samples with a rising ``seq``. Metrics drift like a real
machine's (a CPU random walk with bursts, memory creeping, traffic that follows the CPU).

Scale: devices are spread over a few threads; each thread keeps one keep-alive HTTP connection
and a heap of its devices ordered by when they are due, so 10,000 devices need no more than
``--threads`` connections. Without Django: the module only needs the standard library.
"""

from __future__ import annotations

import heapq
import http.client
import json
import math
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class VirtualDevice:
    index: int
    device_id: str = ""
    token: str = ""
    seq: int = 0
    cpu: float = 20.0
    mem_used: int = 0
    mem_total: int = 4 * 1024**3
    disk_used: int = 20 * 1024**3
    pending: list = field(default_factory=list)
    config: dict | None = None  # what the server answered at enrollment ("config")

    def take_sample(self, ts: float, rng: random.Random) -> dict:
        self.seq += 1
        self.cpu = min(100.0, max(0.0, self.cpu + rng.gauss(0, 6) + (40 if rng.random() < 0.02 else 0)))
        self.cpu += (25 - self.cpu) * 0.05  # drifts back to a baseline
        if not self.mem_used:
            self.mem_used = int(self.mem_total * rng.uniform(0.3, 0.6))
        self.mem_used = int(min(self.mem_total * 0.97, max(self.mem_total * 0.1,
                                                           self.mem_used + rng.gauss(0, 8e6))))
        self.disk_used += rng.randint(0, 200_000)
        rx = max(0.0, self.cpu * 3000 + rng.gauss(0, 5000))
        return {
            "seq": self.seq, "ts": round(ts, 3), "cpu_percent": round(self.cpu, 1),
            "load_1m": round(self.cpu / 25, 2), "mem_used_bytes": self.mem_used,
            "mem_total_bytes": self.mem_total, "swap_used_bytes": 0, "swap_total_bytes": 0,
            "disk_used_bytes": self.disk_used, "disk_total_bytes": 64 * 1024**3,
            "net_rx_bytes_per_s": round(rx, 1), "net_tx_bytes_per_s": round(rx * 0.3, 1),
            "temperature_c": round(40 + self.cpu * 0.35 + rng.gauss(0, 0.5), 1),
            "uptime_s": round(time.monotonic(), 1), "agent_rss_bytes": 18_000_000 + self.index % 1000,
        }


@dataclass
class Stats:
    requests: int = 0
    samples_sent: int = 0
    samples_acked: int = 0
    errors: dict = field(default_factory=dict)
    latencies: list = field(default_factory=list)
    rebased: int = 0

    def merge(self, other: Stats) -> None:
        self.requests += other.requests
        self.samples_sent += other.samples_sent
        self.samples_acked += other.samples_acked
        self.rebased += other.rebased
        self.latencies.extend(other.latencies)
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects once when the server closed it."""

    def __init__(self, server: str, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(server)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        self.conn = cls(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: dict | None, token: str | None = None):
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, self.base + path, body=data, headers=headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, (json.loads(payload) if payload else {})
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
            except ValueError:
                return resp.status, {}
        raise ConnectionError("unreachable")  # pragma: no cover

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def enroll_all(server: str, token: str, devices: list[VirtualDevice], prefix: str,
               threads: int, log=print) -> int:
    """Enroll every device without credentials; returns how many failed."""
    todo = [d for d in devices if not d.token]
    failures = []
    lock = threading.Lock()

    def work(chunk):
        conn = Connection(server)
        for d in chunk:
            inventory = {"hostname": f"{prefix}-{d.index:05d}", "os": "Linux", "arch": "x86_64",
                         "cpu": {"model": "Simulated CPU", "cores": 4},
                         "memory_total_bytes": d.mem_total, "agent_version": "simulated"}
            for _ in range(20):
                try:
                    code, body = conn.request("POST", "/api/v1/agent/enroll", {
                        "enrollment_token": token, "name": f"{prefix}-{d.index:05d}",
                        "fingerprint": f"{prefix}-{d.index}", "inventory": inventory})
                except OSError:
                    code, body = 0, {}
                if code == 201:
                    d.device_id, d.token = body["device_id"], body["device_token"]
                    d.config = body.get("config") if isinstance(body.get("config"), dict) else None
                    conn.request("PUT", "/api/v1/agent/inventory", inventory, d.token)
                    break
                if code in (429, 0) or code >= 500:
                    time.sleep(0.5)
                    continue
                break
            if not d.token:
                with lock:
                    failures.append((d.index, code, body))
        conn.close()

    chunks = [todo[i::threads] for i in range(max(1, threads))]
    workers = [threading.Thread(target=work, args=(c,), daemon=True) for c in chunks if c]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        log(f"enrollment failed for {len(failures)} devices, e.g. {failures[0]}")
    return len(failures)


def server_config(server: str, devices: list[VirtualDevice]) -> dict:
    """The agent settings the server hands out: from an enrollment answer when a device enrolled
    in this run, else ``GET /api/v1/agent/config`` with a device's token; ``{}`` when unknown."""
    for d in devices:
        if d.config:
            return d.config
    conn = Connection(server, timeout=10)
    try:
        for d in devices[:3]:
            try:
                code, body = conn.request("GET", "/api/v1/agent/config", None, d.token)
            except OSError:
                continue
            if code == 200 and isinstance(body.get("config"), dict):
                return body["config"]
    finally:
        conn.close()
    return {}


def reporting_settings(config: dict, interval: float | None, batch: int | None) -> tuple[float, int]:
    """(interval, batch size): the flags when given, else the server's config, else 10 s and 3."""
    if interval is None:
        value = config.get("telemetry_interval_s")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 86400
        interval = float(value) if ok else 10.0
    if not batch:
        value = config.get("batch_size")
        batch = value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000 else 3
    return interval, batch


def run_fleet(server: str, devices: list[VirtualDevice], *, interval: float, batch: int,
              duration: float, threads: int, progress_every: float = 10.0, log=print,
              seed: int = 1) -> tuple[Stats, float]:
    """Report telemetry for ``duration`` seconds. ``interval`` 0: as fast as the server takes it
    (each device sends back-to-back batches of ``batch`` samples stamped now)."""
    stop_at = time.monotonic() + duration
    period = interval * batch
    totals = Stats()
    lock = threading.Lock()
    progress = {"requests": 0, "acked": 0}

    def work(n: int, chunk: list[VirtualDevice]):
        rng = random.Random(seed * 1000 + n)
        conn = Connection(server)
        stats = Stats()
        start = time.monotonic()
        # Spread the first reports over one period, as real agents started at different times.
        heap = [(start + (rng.uniform(0, period) if period else 0), d.index, d) for d in chunk]
        heapq.heapify(heap)
        while heap:
            due, _, d = heapq.heappop(heap)
            now = time.monotonic()
            if now >= stop_at:
                break
            if due > now:
                time.sleep(min(due - now, stop_at - now))
                if time.monotonic() >= stop_at:
                    break
            wall = time.time()
            if interval:
                samples = [d.take_sample(wall - (batch - 1 - i) * interval, rng) for i in range(batch)]
            else:
                samples = [d.take_sample(wall, rng) for _ in range(batch)]
            d.pending.extend(samples)
            t0 = time.perf_counter()
            try:
                code, body = conn.request("POST", "/api/v1/agent/telemetry",
                                          {"samples": d.pending, "dropped": 0,
                                           "interval_s": interval or 1, "batch_size": batch},
                                          d.token)
            except OSError as exc:
                stats.error(type(exc).__name__)
                code, body = 0, {}
            stats.latencies.append(time.perf_counter() - t0)
            stats.requests += 1
            stats.samples_sent += len(samples)
            if code == 200:
                acked = body.get("acked_seq", 0)
                stats.samples_acked += sum(1 for s in d.pending if s["seq"] <= acked)
                if acked > d.seq:  # the server holds more than we issued: start after it
                    d.seq, stats.rebased = acked, stats.rebased + 1
                d.pending = [s for s in d.pending if s["seq"] > acked]
            elif code:
                stats.error(f"HTTP {code}")
                if 400 <= code < 500 and code != 429:
                    d.pending = []  # refused for good, like the agent
            d.pending = d.pending[-1000:]
            with lock:
                progress["requests"] += 1
            heapq.heappush(heap, (due + period if period else time.monotonic(), d.index, d))
        conn.close()
        with lock:
            totals.merge(stats)

    chunks = [devices[i::threads] for i in range(max(1, threads))]
    workers = [threading.Thread(target=work, args=(n, c), daemon=True)
               for n, c in enumerate(chunks) if c]
    began = time.monotonic()
    for w in workers:
        w.start()
    next_report = began + progress_every
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=0.2)
        if progress_every and time.monotonic() >= next_report:
            next_report += progress_every
            log(f"[{time.monotonic() - began:6.1f}s] {progress['requests']} reports sent")
    return totals, time.monotonic() - began


def summary(stats: Stats, elapsed: float) -> dict:
    p50, p99 = percentile(stats.latencies, 50), percentile(stats.latencies, 99)
    return {
        "elapsed_s": round(elapsed, 2),
        "requests": stats.requests,
        "samples_sent": stats.samples_sent,
        "samples_acked": stats.samples_acked,
        "samples_per_s": round(stats.samples_acked / elapsed, 1) if elapsed else 0.0,
        "errors": stats.errors,
        "rebased": stats.rebased,
        "latency_ms": {"p50": round(p50 * 1000, 2) if p50 is not None else None,
                       "p99": round(p99 * 1000, 2) if p99 is not None else None},
    }
