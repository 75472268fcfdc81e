"""Simulated devices for rollouts: they poll the desired state (with ``If-None-Match``) and send
the deployment reports a real agent sends (downloading → verifying → checking → installed, or
failed), optionally fetching the artifact and checking its sha256. For tests (in-process, through
any transport) and ``bench/rollout`` (HTTP, many threads).

This is the deployments side of ``fleet/simulator.py`` (which does enrollment and telemetry) and,
like it, needs only the standard library. The install itself is not simulated beyond the reports:
no file is written and no model is run.
"""

from __future__ import annotations

import hashlib
import heapq
import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field

from fleet.simulator import Connection, percentile

DESIRED_STATE = "/api/v1/agent/desired-state"
REPORTS = "/api/v1/agent/reports"


@dataclass
class SimDevice:
    index: int
    device_id: str = ""
    token: str = ""
    etag: str | None = None
    running: dict = field(default_factory=dict)  # model -> variant_id
    refused: set = field(default_factory=set)  # "assignment:variant" refused once, not retried
    kept: set = field(default_factory=set)  # variants installed before (instant rollback)
    fail: bool = False  # refuse every new variant (a failed health check)


@dataclass
class PollStats:
    polls: int = 0
    not_modified: int = 0
    changed: int = 0
    reports: int = 0
    downloads: int = 0
    download_bytes: int = 0
    errors: dict = field(default_factory=dict)
    latencies: list = field(default_factory=list)  # seconds, desired-state polls only

    def merge(self, other: PollStats) -> None:
        for name in ("polls", "not_modified", "changed", "reports", "downloads", "download_bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies.extend(other.latencies)
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self, elapsed: float) -> dict:
        return {"polls": self.polls, "polls_per_s": round(self.polls / elapsed, 1) if elapsed else None,
                "share_304": round(self.not_modified / self.polls, 4) if self.polls else None,
                "changed": self.changed, "reports": self.reports, "downloads": self.downloads,
                "p50_ms": _ms(percentile(self.latencies, 50)), "p99_ms": _ms(percentile(self.latencies, 99)),
                "errors": dict(self.errors)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class HttpTransport(Connection):
    """One keep-alive HTTP(S)/1.1 connection (``fleet.simulator.Connection``: scheme, host,
    reconnect) that answers raw: ``request() -> (status, headers, body bytes)``, for ETags and
    artifact bytes."""

    def request(self, method: str, path: str, *, token: str, body: dict | None = None,
                headers: dict | None = None) -> tuple[int, dict, bytes]:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        hdrs = {"Authorization": f"Bearer {token}", "Accept": "application/json", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self._connect()
            try:
                self.conn.request(method, self.base + path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                payload = resp.read()
                answer = {k.lower(): v for k, v in resp.getheaders()}
                if answer.get("connection", "").lower() == "close":
                    self.close()
                return resp.status, answer, payload
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise ConnectionError("unreachable")  # pragma: no cover


def _report(dev: SimDevice, entry: dict, variant_id, state: str, step: str = "", **extra) -> dict:
    raw = f"{entry['assignment_id']}:{variant_id}:{state}:{step}"
    return {"report_id": hashlib.sha256(raw.encode()).hexdigest()[:40], "model": entry["model"],
            "variant_id": variant_id, "state": state, **extra}


def poll(dev: SimDevice, transport, stats: PollStats, *, download: bool = False,
         rng: random.Random | None = None) -> bool:
    """One poll of one device, then the reports a real agent would send for what changed.
    Returns True when the desired state had changed (a 200)."""
    headers = {"If-None-Match": dev.etag} if dev.etag else None
    t0 = time.perf_counter()
    status, resp_headers, body = transport.request("GET", DESIRED_STATE, token=dev.token, headers=headers)
    stats.latencies.append(time.perf_counter() - t0)
    stats.polls += 1
    if status == 304:
        stats.not_modified += 1
        return False
    if status != 200:
        stats.error(f"desired-state {status}")
        return False
    stats.changed += 1
    doc = json.loads(body)
    reports: list[dict] = []
    wanted = {e["model"]: e for e in doc.get("models", [])}
    for model in list(dev.running):
        if model not in wanted:
            del dev.running[model]
    for entry in wanted.values():
        reports += _converge(dev, entry, transport, stats, download, rng or random)
    ok = True
    for i in range(0, len(reports), 100):
        st, _, _ = transport.request("POST", REPORTS, token=dev.token, body={"reports": reports[i:i + 100]})
        if st != 200:
            stats.error(f"reports {st}")
            ok = False
        stats.reports += len(reports[i:i + 100])
    if ok:  # like the agent: the ETag is kept only once the reports are sent
        dev.etag = resp_headers.get("etag")
    return True


def _converge(dev: SimDevice, entry: dict, transport, stats: PollStats, download: bool, rng) -> list[dict]:
    model, variant = entry["model"], entry.get("variant")
    if variant is None:
        dev.running.pop(model, None)
        return [_report(dev, entry, None, "removed")] if entry.get("state") == "rolling_back" else []
    vid = variant["variant_id"]
    if dev.running.get(model) == vid:
        return ([] if entry.get("state") in ("installed", "rolled_back")
                else [_report(dev, entry, vid, "installed", step="current")])
    key = f"{entry['assignment_id']}:{vid}"
    if key in dev.refused:
        return []
    if vid in dev.kept:  # the previous version is still on the device: switch back at once
        dev.running[model] = vid
        return [_report(dev, entry, vid, "installed", step="kept")]
    out = [_report(dev, entry, vid, "downloading", progress=0.0)]
    if download:
        status, _, data = transport.request("GET", variant["download_url"], token=dev.token)
        stats.downloads += 1
        stats.download_bytes += len(data)
        if status != 200 or hashlib.sha256(data).hexdigest() != variant["sha256"]:
            dev.refused.add(key)
            stats.error(f"artifact {status}")
            return out + [_report(dev, entry, vid, "failed", error=f"download: HTTP {status} or sha256 mismatch")]
    out += [_report(dev, entry, vid, "verifying"), _report(dev, entry, vid, "checking")]
    if dev.fail:
        dev.refused.add(key)
        return out + [_report(dev, entry, vid, "failed", error="health check failed: cosine 0.12 < 0.99 (simulated)")]
    dev.running[model] = vid
    dev.kept.add(vid)
    bench = {"p50_ms": round(rng.uniform(1.0, 3.0), 3), "p95_ms": round(rng.uniform(3.0, 5.0), 3),
             "peak_rss_bytes": 40_000_000 + dev.index}
    return out + [_report(dev, entry, vid, "installed", benchmark=bench)]


def run_polling(server: str, devices: list[SimDevice], *, interval: float, duration: float, threads: int = 8,
                download: bool = False, stop=None, seed: int = 0) -> tuple[PollStats, float]:
    """Every device polls every ``interval`` s (± 10 % jitter; 0 = back to back; negative = once
    each, back to back) for at most ``duration`` s over ``threads`` keep-alive connections.
    Returns the merged stats and the elapsed time."""
    chunks = [devices[i::threads] for i in range(threads)]
    results: list[PollStats] = []
    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + duration

    def work(n: int, chunk: list[SimDevice]) -> None:
        rng = random.Random(seed * 1000 + n)
        transport, stats = HttpTransport(server), PollStats()
        due = [(started + (rng.uniform(0, interval) if interval > 0 else 0), i) for i in range(len(chunk))]
        heapq.heapify(due)
        while due and not (stop and stop()):
            when, i = heapq.heappop(due)
            now = time.monotonic()
            if when > deadline or now > deadline:
                break
            if when > now:
                time.sleep(when - now)
            try:
                poll(chunk[i], transport, stats, download=download, rng=rng)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                stats.error(type(exc).__name__)
                transport.close()
            if interval >= 0:
                heapq.heappush(due, (time.monotonic() + interval * rng.uniform(0.9, 1.1), i))
        transport.close()
        with lock:
            results.append(stats)

    workers = [threading.Thread(target=work, args=(n, c), daemon=True) for n, c in enumerate(chunks) if c]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = PollStats()
    for s in results:
        total.merge(s)
    return total, time.monotonic() - started
