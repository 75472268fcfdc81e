"""The fleet at a glance: devices by presence, firing alerts, running jobs, active rollouts and
fleet health. Every query here is an aggregate or a capped list, so the page costs the same
number of queries for ten devices and for ten thousand."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, Max, Q
from django.utils import timezone

from fleet.models import (
    Alert,
    AlertState,
    Deployment,
    DeploymentState,
    Device,
    DeviceStatus,
    Rollup1m,
)

from ._base import page_or_fragment

PRESENCES = ("online", "late", "offline")


def presence_q(presence: str) -> Q:
    """Active devices that are online / late / offline, by the presence the beat task stores
    (DevicePresence). An active device without one has never reported and counts as offline."""
    active = Q(status=DeviceStatus.ACTIVE)
    if presence == "offline":
        return active & (Q(presence__state="offline") | Q(presence__isnull=True))
    return active & Q(presence__state=presence)


def device_counts() -> dict:
    """All device tiles in one aggregate query."""
    aggregates = {p: Count("id", filter=presence_q(p)) for p in PRESENCES}
    aggregates.update({s.value: Count("id", filter=Q(status=s.value)) for s in DeviceStatus})
    aggregates["total"] = Count("id", filter=~Q(status=DeviceStatus.DECOMMISSIONED))
    return Device.objects.aggregate(**aggregates)


def firing_alerts(limit: int = 8):
    """(count, latest few) of firing alerts."""
    qs = Alert.objects.filter(state=AlertState.FIRING)
    return {"count": qs.count(), "items": list(qs.select_related("device", "rule").order_by("-fired_at")[:limit])}


def running_jobs(limit: int = 6):
    from compression.models import CompressionJob, JobStatus

    qs = CompressionJob.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    return {"count": qs.count(),
            "items": list(qs.select_related("version__model").order_by("-created_at")[:limit])}


def active_rollouts(limit: int = 6):
    qs = Deployment.objects.filter(state__in=[DeploymentState.ACTIVE, DeploymentState.PAUSED])
    return {"count": qs.count(), "items": list(qs.select_related("model").order_by("-created_at")[:limit])}


HEALTH_CACHE_KEY, HEALTH_CACHE_S = "dashboard:fleet-health", 20


def fleet_health():
    """Fleet CPU, memory and disk over the last five minutes, cached for 20 s: with 10,000
    devices the aggregate reads ~50,000 rollup rows (a few hundred ms), and every open overview
    polls every 5 s, so the figures are shared rather than recomputed per request."""
    from django.core.cache import cache

    return cache.get_or_set(HEALTH_CACHE_KEY, _fleet_health, HEALTH_CACHE_S)


def _fleet_health():
    """One aggregate query over the last five minutes of 1-minute rollups; None while nothing
    has reported."""
    since = timezone.now() - timedelta(minutes=5)
    agg = Rollup1m.objects.filter(bucket__gte=since).aggregate(
        cpu=Avg("cpu_percent_avg"), cpu_max=Max("cpu_percent_max"),
        mem_used=Avg("mem_used_bytes_avg"), mem_total=Avg("mem_total_bytes_avg"),
        disk_used=Avg("disk_used_bytes_avg"), disk_total=Avg("disk_total_bytes_avg"),
        temp_max=Max("temperature_c_max"), devices=Count("device", distinct=True),
    )
    if not agg["devices"]:
        return None
    # The window holds up to five buckets per device: the fleet's totals are the mean per
    # device-minute times the devices reporting (a plain Sum would count each device five times).
    for key in ("mem_used", "mem_total", "disk_used", "disk_total"):
        if agg[key] is not None:
            agg[key] = float(agg[key]) * agg["devices"]

    def share(used, total):
        return 100.0 * used / total if used is not None and total else None

    return {
        "cpu": agg["cpu"], "cpu_max": agg["cpu_max"],
        "mem": share(agg["mem_used"], agg["mem_total"]), "mem_used": agg["mem_used"], "mem_total": agg["mem_total"],
        "disk": share(agg["disk_used"], agg["disk_total"]), "disk_used": agg["disk_used"],
        "disk_total": agg["disk_total"], "temp_max": agg["temp_max"], "devices": agg["devices"],
    }


def overview_context() -> dict:
    return {
        "counts": device_counts(),
        "presences": PRESENCES,
        "alerts": firing_alerts(),
        "jobs": running_jobs(),
        "rollouts": active_rollouts(),
        "health": fleet_health(),
        "now": timezone.now(),
    }


@login_required
def overview(request):
    return page_or_fragment(request, "fleet/overview.html", "fleet/partials/overview_live.html",
                            overview_context())
