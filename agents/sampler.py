"""One telemetry sample of the device's health, read with psutil.

``ts`` is the sample time as Unix epoch seconds (a float with millisecond precision, UTC by
definition): compact, unambiguous and cheap to compare, which matters for the buffer's age bound.
Rates (CPU %, network bytes/s) cover the time since the previous sample. Fields the platform does
not provide (temperatures on most VMs, the load average on Windows) are left out, never faked.
"""

from __future__ import annotations

import math
import os
import time

import psutil

# Sensor chips and labels that measure the CPU/SoC, best first. Anything else (NVMe, Wi-Fi,
# battery) is used only when none of these exists.
_CPU_SENSORS = (
    "coretemp",
    "k10temp",
    "zenpower",
    "cpu_thermal",
    "cpu-thermal",
    "soc_thermal",
    "soc-thermal",
    "x86_pkg_temp",
    "cpu",
    "acpitz",
    "thermal_zone0",
)
_IGNORED_NICS = ("lo",)


def _existing(path: str) -> str:
    """``path`` or its nearest existing parent (the models dir may not exist yet)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _temperature() -> float | None:
    """The hottest CPU-ish sensor in °C, or None when the platform has no sensors."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except Exception:  # noqa: BLE001 - a broken hwmon driver must not stop telemetry
        return None
    if not sensors:
        return None
    preferred = [sensors[name] for name in _CPU_SENSORS if name in sensors]
    readings = [t.current for group in (preferred or sensors.values()) for t in group]
    readings = [r for r in readings if r is not None and math.isfinite(r) and -60 < r < 200]
    return round(max(readings), 1) if readings else None


class Sampler:
    """Takes samples; keeps the previous counters to turn them into rates."""

    def __init__(self, models_dir: str = "/"):
        self.models_dir = models_dir
        self.process = psutil.Process()
        self.boot_time = psutil.boot_time()
        # Prime the rate counters so the first sample already covers a real interval.
        psutil.cpu_percent(interval=None)
        self.process.cpu_percent(interval=None)
        self._last_net = self._net_counters()
        self._last_mono = time.monotonic()

    @staticmethod
    def _net_counters() -> tuple[int, int]:
        rx = tx = 0
        try:
            nics = psutil.net_io_counters(pernic=True)
        except Exception:  # noqa: BLE001 - e.g. /proc/net/dev unreadable in a sandbox
            return 0, 0
        for name, c in nics.items():
            if name not in _IGNORED_NICS:
                rx += c.bytes_recv
                tx += c.bytes_sent
        return rx, tx

    def sample(self) -> dict:
        """The current sample (without ``seq``, which the buffer assigns)."""
        now_mono = time.monotonic()
        elapsed = max(now_mono - self._last_mono, 1e-3)
        rx, tx = self._net_counters()
        last_rx, last_tx = self._last_net
        self._last_net, self._last_mono = (rx, tx), now_mono

        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        try:
            disk = psutil.disk_usage(_existing(self.models_dir))
        except OSError:
            disk = None
        s: dict = {
            "ts": round(time.time(), 3),
            "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
        }
        try:
            load1, load5, load15 = os.getloadavg()
            s.update(load_1m=round(load1, 2), load_5m=round(load5, 2), load_15m=round(load15, 2))
        except (AttributeError, OSError):
            pass
        s.update(
            # "used" is what is not available: what an operator needs to know whether a model fits.
            mem_used_bytes=mem.total - mem.available,
            mem_total_bytes=mem.total,
            mem_available_bytes=mem.available,
            swap_used_bytes=swap.used,
            swap_total_bytes=swap.total,
        )
        if disk is not None:
            s.update(
                disk_used_bytes=disk.used, disk_total_bytes=disk.total, disk_free_bytes=disk.free
            )
        # A counter that went backwards (interface reset, driver reload) yields 0, not a spike.
        s["net_rx_bytes_per_s"] = round(max(rx - last_rx, 0) / elapsed, 1)
        s["net_tx_bytes_per_s"] = round(max(tx - last_tx, 0) / elapsed, 1)
        temperature = _temperature()
        if temperature is not None:
            s["temperature_c"] = temperature
        s["uptime_s"] = round(max(time.time() - self.boot_time, 0.0), 1)
        with self.process.oneshot():
            s["agent_rss_bytes"] = self.process.memory_info().rss
            s["agent_cpu_percent"] = round(self.process.cpu_percent(interval=None), 2)
        return s
