"""Variant placement: which build of a model a device should run. Pure functions, no database.

The ``auto`` policy, for one device and the deployable variants of one model version:

1. Keep the variants that *fit*: artifact size within the device's free disk minus a reserve,
   estimated peak memory within its available memory, and only execution providers the device
   has. Unknown resources do not exclude anything (the reason says they were unknown).
2. Among those, take the fastest by the latency measured on devices of the same class (same CPU
   model and architecture). Variants not yet measured on that class get an estimate: their worker
   latency scaled by how much slower or faster this class was on the variants that were measured.
   Without any class measurement, rank by worker latency; without that either, by size.
3. Ties go to the smaller artifact.

The result carries a sentence for people and a dict for programs (the dashboard and the API show
both).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

CPU_PROVIDER = "CPUExecutionProvider"
MEMORY_ESTIMATE_FACTOR = 3  # peak memory of a variant with no estimate: about 3x its file size


@dataclass(frozen=True)
class DeviceResources:
    """What placement needs to know about a device. ``None`` means unknown."""

    device_id: str
    cpu_model: str = ""
    arch: str = ""
    free_disk_bytes: int | None = None
    available_memory_bytes: int | None = None
    execution_providers: tuple[str, ...] = ()
    disk_source: str = "unknown"  # "telemetry" or "inventory"
    memory_source: str = "unknown"

    @property
    def device_class(self) -> tuple[str, str]:
        return (self.cpu_model, self.arch)

    @property
    def providers(self) -> set[str]:
        # Every onnxruntime build has the CPU provider; an empty list means "not reported".
        return set(self.execution_providers) | {CPU_PROVIDER}


@dataclass(frozen=True)
class Candidate:
    """A deployable variant, with what placement ranks it by."""

    variant_id: str
    recipe: str = ""
    size_bytes: int = 0
    peak_memory_bytes: int | None = None
    execution_providers: tuple[str, ...] = ()
    worker_p50_ms: float | None = None

    @property
    def memory_estimate(self) -> int:
        return self.peak_memory_bytes or self.size_bytes * MEMORY_ESTIMATE_FACTOR


@dataclass
class Choice:
    """The outcome for one device: a variant id (or None when nothing fits) and why."""

    variant_id: str | None
    reason: str
    detail: dict = field(default_factory=dict)


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1024**2:.1f} MiB"


def misfit(device: DeviceResources, cand: Candidate, disk_reserve_bytes: int) -> str | None:
    """Why ``cand`` does not fit ``device``, or None when it fits."""
    missing = set(cand.execution_providers) - device.providers
    if missing:
        return f"needs {', '.join(sorted(missing))}"
    if device.free_disk_bytes is not None:
        room = device.free_disk_bytes - disk_reserve_bytes
        if cand.size_bytes > room:
            return f"{_mib(cand.size_bytes)} > {_mib(max(room, 0))} free disk after the reserve"
    if device.available_memory_bytes is not None and cand.memory_estimate > device.available_memory_bytes:
        return f"~{_mib(cand.memory_estimate)} peak memory > {_mib(device.available_memory_bytes)} available"
    return None


def class_speed_factor(candidates: list[Candidate], class_p50: dict[str, float]) -> float | None:
    """Median ratio (this class's latency / worker latency) over variants measured on both."""
    ratios = [
        class_p50[c.variant_id] / c.worker_p50_ms
        for c in candidates
        if c.variant_id in class_p50 and c.worker_p50_ms
    ]
    return statistics.median(ratios) if ratios else None


def rank(candidates: list[Candidate], class_p50: dict[str, float]) -> tuple[str, list[tuple[Candidate, float | None, str]]]:
    """Order fitting candidates best first. Returns the basis ("device_class", "worker" or
    "size") and, per candidate, the latency used and where it came from."""
    if any(c.variant_id in class_p50 for c in candidates):
        factor = class_speed_factor(candidates, class_p50)
        scored = []
        for c in candidates:
            if c.variant_id in class_p50:
                scored.append((c, class_p50[c.variant_id], "measured on this device class"))
            elif factor is not None and c.worker_p50_ms:
                scored.append((c, c.worker_p50_ms * factor, "estimated from worker latency"))
            else:
                scored.append((c, None, "not measured"))
        basis = "device_class"
    elif any(c.worker_p50_ms for c in candidates):
        scored = [(c, c.worker_p50_ms, "worker") if c.worker_p50_ms else (c, None, "not measured")
                  for c in candidates]
        basis = "worker"
    else:
        scored = [(c, None, "size only") for c in candidates]
        basis = "size"
    # Unmeasured candidates go last; ties (and the "size" basis) go to the smaller file.
    scored.sort(key=lambda t: (t[1] is None, t[1] if t[1] is not None else 0.0, t[0].size_bytes))
    return basis, scored


def choose_auto(
    device: DeviceResources,
    candidates: list[Candidate],
    class_p50: dict[str, float] | None = None,
    *,
    disk_reserve_bytes: int = 0,
) -> Choice:
    """The ``auto`` policy for one device (see the module docstring)."""
    class_p50 = class_p50 or {}
    resources = {
        "free_disk_bytes": device.free_disk_bytes, "disk_source": device.disk_source,
        "disk_reserve_bytes": disk_reserve_bytes,
        "available_memory_bytes": device.available_memory_bytes, "memory_source": device.memory_source,
        "execution_providers": sorted(device.providers),
        "device_class": {"cpu_model": device.cpu_model, "arch": device.arch},
    }
    if not candidates:
        return Choice(None, "the model version has no deployable (verified, signed) variant",
                      {"policy": "auto", "resources": resources, "rejected": {}})
    rejected = {}
    fitting = []
    for cand in candidates:
        why = misfit(device, cand, disk_reserve_bytes)
        if why:
            rejected[cand.variant_id] = why
        else:
            fitting.append(cand)
    if not fitting:
        reasons = "; ".join(f"{_label(c)}: {rejected[c.variant_id]}" for c in candidates)
        return Choice(None, f"no variant fits this device ({reasons})",
                      {"policy": "auto", "resources": resources, "rejected": rejected})
    basis, scored = rank(fitting, class_p50)
    best, latency, source = scored[0]
    if basis == "size":
        why = f"smallest of {len(fitting)} fitting variant(s); no latency measured anywhere"
    elif latency is None:
        why = f"smallest of {len(fitting)} fitting variant(s) (no latency for it)"
    else:
        why = f"fastest of {len(fitting)} fitting variant(s): {latency:.2f} ms p50 ({source})"
    unknown = [name for name, value in (("disk", device.free_disk_bytes),
                                        ("memory", device.available_memory_bytes)) if value is None]
    if unknown:
        why += f"; {' and '.join(unknown)} unknown, not checked"
    ranking = [{"variant_id": c.variant_id, "recipe": c.recipe, "size_bytes": c.size_bytes,
                "latency_ms": None if lat is None else round(lat, 4), "latency_source": src}
               for c, lat, src in scored]
    return Choice(best.variant_id, f"{_label(best)}: {why}",
                  {"policy": "auto", "basis": basis, "latency_ms": latency, "latency_source": source,
                   "resources": resources, "ranking": ranking, "rejected": rejected})


def choose_pinned(device: DeviceResources, cand: Candidate, *, disk_reserve_bytes: int = 0) -> Choice:
    """The ``pinned`` policy: the operator's variant, unless it cannot run on this device."""
    why = misfit(device, cand, disk_reserve_bytes)
    if why:
        return Choice(None, f"pinned variant {_label(cand)} does not fit: {why}",
                      {"policy": "pinned", "rejected": {cand.variant_id: why}})
    return Choice(cand.variant_id, f"{_label(cand)}: pinned by the operator", {"policy": "pinned"})


def better_enough(current_ms: float | None, new_ms: float | None, margin: float = 0.1) -> bool:
    """Re-placement hysteresis: switch a device that already runs a variant only when the new
    choice is faster by more than ``margin`` (10 %), so noise does not cause churn."""
    if new_ms is None:
        return False
    if current_ms is None:
        return True
    return new_ms < current_ms * (1 - margin)


def _label(c: Candidate) -> str:
    return f"{c.recipe or 'variant'} {c.variant_id[:8]} ({_mib(c.size_bytes)})"
