"""Shared helpers for the telemetry tests: valid samples and direct inserts with controlled time."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fleet.models import Device
from fleet.telemetry import ingest


def sample(seq: int, ts: float | str | None = None, **overrides) -> dict:
    """A valid sample as the agent sends it."""
    body = {
        "seq": seq,
        "ts": time.time() - 1 if ts is None else ts,
        "cpu_percent": 12.5,
        "load_1m": 0.4,
        "mem_used_bytes": 1_000_000_000,
        "mem_total_bytes": 4_000_000_000,
        "swap_used_bytes": 0,
        "disk_used_bytes": 10_000_000_000,
        "disk_total_bytes": 64_000_000_000,
        "net_rx_bytes_per_s": 1200.0,
        "net_tx_bytes_per_s": 800.0,
        "temperature_c": 48.0,
        "uptime_s": 3600.0,
        "agent_rss_bytes": 18_000_000,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def store(device_id, samples: list[dict], now: float | None = None) -> ingest.IngestResult:
    """Ingest samples for a device as the endpoint would, at ``now`` (epoch seconds)."""
    device = Device.objects.get(pk=device_id)
    return ingest.ingest(device, {"samples": samples}, now=now)


def epoch(dt: datetime) -> float:
    return dt.timestamp()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
