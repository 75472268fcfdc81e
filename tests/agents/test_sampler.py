"""A sample holds the protocol's fields with sane values."""

from __future__ import annotations

import json
import math
import time

from agents.sampler import Sampler

REQUIRED = {
    "ts",
    "cpu_percent",
    "load_1m",
    "load_5m",
    "load_15m",
    "mem_used_bytes",
    "mem_total_bytes",
    "swap_used_bytes",
    "swap_total_bytes",
    "disk_used_bytes",
    "disk_total_bytes",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "uptime_s",
    "agent_rss_bytes",
}


def test_sample_has_the_protocol_fields_in_sane_ranges(tmp_path):
    sampler = Sampler(str(tmp_path / "models" / "not-yet-created"))
    time.sleep(0.2)
    s = sampler.sample()
    assert REQUIRED <= set(s)
    assert "seq" not in s  # the buffer assigns it
    assert abs(s["ts"] - time.time()) < 5
    assert 0.0 <= s["cpu_percent"] <= 100.0
    assert all(s[k] >= 0 for k in ("load_1m", "load_5m", "load_15m"))
    assert 0 < s["mem_used_bytes"] <= s["mem_total_bytes"]
    assert 0 <= s["swap_used_bytes"] <= max(s["swap_total_bytes"], s["swap_used_bytes"])
    assert 0 < s["disk_used_bytes"] < s["disk_total_bytes"]
    assert s["net_rx_bytes_per_s"] >= 0 and s["net_tx_bytes_per_s"] >= 0
    assert s["uptime_s"] > 0
    assert 1 * 2**20 < s["agent_rss_bytes"] < 2**30
    if "temperature_c" in s:
        assert -60 < s["temperature_c"] < 200
    # Everything is finite and JSON-clean (the buffer stores it with allow_nan=False).
    json.dumps(s, allow_nan=False)
    assert all(math.isfinite(v) for v in s.values() if isinstance(v, float))


def test_network_rates_cover_the_time_between_samples(tmp_path):
    sampler = Sampler(str(tmp_path))
    first = sampler.sample()
    second = sampler.sample()
    assert second["ts"] >= first["ts"]
    assert second["net_rx_bytes_per_s"] >= 0
