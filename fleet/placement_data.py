"""The database side of placement: a device's resources, a version's candidate variants and the
latencies measured per device class, fed to the pure functions of ``fleet.placement``."""

from __future__ import annotations

import statistics

from django.apps import apps
from django.conf import settings

from .placement import Candidate, Choice, DeviceResources, choose_auto, choose_pinned

DEFAULT_DISK_RESERVE_BYTES = 64 * 1024**2


def disk_reserve_bytes() -> int:
    """Disk kept free on devices beyond the artifact (``EDGEFLEET_DEPLOY_DISK_RESERVE_BYTES``)."""
    return int(getattr(settings, "EDGEFLEET", {}).get("DEPLOY_DISK_RESERVE_BYTES", DEFAULT_DISK_RESERVE_BYTES))


def latest_sample(device):
    """The device's latest telemetry sample, or None (also when telemetry is not installed)."""
    try:
        sample_model = apps.get_model("fleet", "TelemetrySample")
    except LookupError:
        return None
    return (sample_model.objects.filter(device_id=device.pk).order_by("-ts")
            .only("disk_used_bytes", "disk_total_bytes", "mem_used_bytes", "mem_total_bytes").first())


_SAMPLE_FIELDS = ("disk_used_bytes", "disk_total_bytes", "mem_used_bytes", "mem_total_bytes")
NOT_FETCHED = object()


def latest_samples(device_ids) -> dict:
    """The latest telemetry sample of many devices at once (``{device_id: sample or None}``),
    one query per 500 devices: a correlated subquery per field on the (device, ts) index. The
    samples are plain objects with the four fields placement uses."""
    from types import SimpleNamespace

    from django.db.models import OuterRef, Subquery

    ids = list(dict.fromkeys(device_ids))
    out: dict = dict.fromkeys(ids)
    try:
        sample_model = apps.get_model("fleet", "TelemetrySample")
    except LookupError:
        return out
    device_model = apps.get_model("fleet", "Device")
    latest = sample_model.objects.filter(device_id=OuterRef("pk")).order_by("-ts")
    for i in range(0, len(ids), 500):
        rows = (device_model.objects.filter(pk__in=ids[i:i + 500])
                .annotate(**{f"s_{f}": Subquery(latest.values(f)[:1]) for f in _SAMPLE_FIELDS},
                          s_ts=Subquery(latest.values("ts")[:1]))
                .values("pk", "s_ts", *(f"s_{f}" for f in _SAMPLE_FIELDS)))
        for row in rows:
            if row["s_ts"] is not None:
                out[row["pk"]] = SimpleNamespace(**{f: row[f"s_{f}"] for f in _SAMPLE_FIELDS})
    return out


def device_resources(device, sample=NOT_FETCHED) -> DeviceResources:
    """Free disk and available memory from the latest telemetry when there is some, else the
    inventory's totals; execution providers from the inventory. ``sample``: the latest sample
    when the caller fetched it already (None: the device has none)."""
    sample = latest_sample(device) if sample is NOT_FETCHED else sample
    free_disk, disk_source = device.disk_total_bytes, "inventory total" if device.disk_total_bytes else "unknown"
    memory, memory_source = device.memory_total_bytes, "inventory total" if device.memory_total_bytes else "unknown"
    if sample is not None:
        if sample.disk_total_bytes and sample.disk_used_bytes is not None:
            free_disk, disk_source = sample.disk_total_bytes - sample.disk_used_bytes, "telemetry"
        if sample.mem_total_bytes and sample.mem_used_bytes is not None:
            memory, memory_source = sample.mem_total_bytes - sample.mem_used_bytes, "telemetry"
    eps = device.execution_providers if isinstance(device.execution_providers, list) else []
    return DeviceResources(
        device_id=str(device.pk), cpu_model=device.cpu_model or "", arch=device.arch or "",
        free_disk_bytes=free_disk, available_memory_bytes=memory,
        execution_providers=tuple(str(e) for e in eps), disk_source=disk_source, memory_source=memory_source,
    )


def deployable_variants(version):
    from compression.models import VariantStatus

    return (version.variants.filter(status=VariantStatus.ACCEPTED).exclude(sha256="")
            .exclude(signature="").exclude(file=""))


def candidate_of(variant) -> Candidate:
    p50 = (variant.latency_ms or {}).get("p50")
    return Candidate(
        variant_id=str(variant.pk), recipe=variant.recipe, size_bytes=variant.size_bytes or 0,
        peak_memory_bytes=variant.peak_memory_bytes,
        execution_providers=tuple(variant.execution_providers or ()),
        worker_p50_ms=float(p50) if isinstance(p50, int | float) else None,
    )


CLASS_SAMPLE = 200  # the latest measurements per variant and device class that placement reads


def class_latencies(variant_ids, cpu_model: str, arch: str) -> dict[str, float]:
    """Median on-device p50 per variant over the latest :data:`CLASS_SAMPLE` devices of one class
    that measured it. Bounded: every device that installs a variant adds a measurement and is
    re-placed with this, so reading them all made each install of a 10,000-device rollout cost
    more than the one before; one index range scan per candidate reads the recent ones."""
    from .models import VariantBenchmark

    out = {}
    for variant_id in variant_ids:
        values = list(VariantBenchmark.objects.filter(variant_id=variant_id, cpu_model=cpu_model, arch=arch)
                      .order_by("-measured_at").values_list("p50_ms", flat=True)[:CLASS_SAMPLE])
        if values:
            out[str(variant_id)] = statistics.median(values)
    return out


class Placer:
    """Chooses variants of one version for many devices, loading the candidates once and the
    class latencies once per device class."""

    def __init__(self, version, policy: str, pinned_variant=None):
        self.version, self.policy, self.pinned = version, policy, pinned_variant
        self.reserve = disk_reserve_bytes()
        self.candidates = [candidate_of(v) for v in deployable_variants(version)] if version else []
        self._latency_cache: dict[tuple[str, str], dict[str, float]] = {}

    def choose(self, device, sample=NOT_FETCHED) -> Choice:
        """The variant for ``device``; pass its latest ``sample`` (from :func:`latest_samples`)
        when placing many devices."""
        resources = device_resources(device, sample)
        if self.policy == "pinned":
            if self.pinned is None or not self.pinned.deployable:
                return Choice(None, "the pinned variant is not deployable (verified and signed)",
                              {"policy": "pinned"})
            return choose_pinned(resources, candidate_of(self.pinned), disk_reserve_bytes=self.reserve)
        key = resources.device_class
        if key not in self._latency_cache:
            self._latency_cache[key] = class_latencies([c.variant_id for c in self.candidates], *key)
        return choose_auto(resources, self.candidates, self._latency_cache[key], disk_reserve_bytes=self.reserve)
