"""The device's hardware and software facts (the ``PUT /api/v1/agent/inventory`` document).

Only facts that change rarely belong here (free disk space and the like are telemetry), so that
comparing documents tells us when to send again. The onnxruntime version and its execution
providers are probed in a child process: the daemon never imports onnxruntime.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys

import psutil

from agents import __version__
from agents.probe import run_probe
from agents.sampler import _existing


def _os_release() -> dict[str, str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        values = {}
        for line in lines:
            key, sep, value = line.partition("=")
            if sep and key and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("\"'")
        return values
    return {}


def _cpu_model() -> str:
    """The CPU's marketing name; on ARM boards, the board or SoC name when that is all there is."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            info = fh.read()
    except OSError:
        return platform.processor() or ""
    found = {}
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and value.strip() and key not in found:
            found[key] = value.strip()
    for key in ("model name", "cpu model", "hardware", "model", "processor"):
        value = found.get(key, "")
        if value and not value.isdigit():
            return value
    try:  # device tree (Raspberry Pi, Jetson): "Raspberry Pi 4 Model B Rev 1.4"
        with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip("\x00\n ")
    except OSError:
        return platform.processor() or ""


def collect(models_dir: str = "/", probe: bool = True, probe_timeout: float = 60.0) -> dict:
    """The inventory document. ``probe=False`` skips the onnxruntime child (fields then null)."""
    release = _os_release()
    uname = platform.uname()
    mem = psutil.virtual_memory()
    swap = psutil.swap_memory()
    try:
        disk = psutil.disk_usage(_existing(models_dir))
        disk_total = disk.total
    except OSError:
        disk_total = None
    try:
        freq = psutil.cpu_freq()
        freq_max = round(freq.max) if freq and freq.max else None
    except Exception:  # noqa: BLE001 - missing cpufreq on VMs and some boards
        freq_max = None
    runtime = run_probe("runtime", timeout=probe_timeout) if probe else {}
    return {
        "hostname": socket.gethostname(),
        "os": release.get("PRETTY_NAME") or f"{uname.system} {uname.release}",
        "os_id": release.get("ID", uname.system.lower()),
        "os_version": release.get("VERSION_ID", ""),
        "kernel": uname.release,
        "arch": uname.machine,
        "cpu_model": _cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=True),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_max_mhz": freq_max,
        "memory_total_bytes": mem.total,
        "swap_total_bytes": swap.total,
        "disk_total_bytes": disk_total,
        "models_dir": os.path.abspath(models_dir),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "agent_version": __version__,
        "psutil_version": psutil.__version__,
        "onnxruntime_version": runtime.get("onnxruntime_version"),
        "execution_providers": runtime.get("execution_providers") or [],
        **({"probe_error": runtime["error"]} if runtime.get("error") else {}),
    }


def canonical(inventory: dict) -> str:
    """A stable text form: two inventories are the same exactly when these strings are equal."""
    return json.dumps(inventory, sort_keys=True, separators=(",", ":"))


def fingerprint() -> str:
    """A stable identity for this machine: the SHA-256 of its machine-id when it has one (systemd
    and dbus provide it; it survives reboots and network changes), else of its permanent MAC
    addresses and hostname. Only a digest leaves the device."""
    import hashlib  # the daemon does not need it: enrollment runs in the CLI process

    parts = []
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                machine_id = fh.read().strip()
        except OSError:
            continue
        if machine_id:
            parts.append("machine-id:" + machine_id)
            break
    if not parts:
        macs = set()
        for name, addrs in psutil.net_if_addrs().items():
            if name == "lo" or name.startswith(("docker", "veth", "br-", "virbr", "tun", "tap")):
                continue
            for addr in addrs:
                if (
                    addr.family == psutil.AF_LINK
                    and addr.address
                    and addr.address != "00:00:00:00:00:00"
                ):
                    macs.add(addr.address.lower())
        parts.extend("mac:" + m for m in sorted(macs))
        parts.append("hostname:" + socket.gethostname())
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


if __name__ == "__main__":  # python -m agents.inventory: what would be sent
    print(json.dumps(collect(sys.argv[1] if len(sys.argv) > 1 else "/"), indent=2))
