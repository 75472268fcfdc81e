"""The fleet at a glance: devices by presence, firing alerts, running jobs, active rollouts and
fleet health. Every query here is an aggregate or a capped list, so the page costs the same
number of queries for ten devices and for ten thousand."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, Max, Q
from django.utils import timezone

from fleet.models import Device, DeviceStatus

from ._base import model_has_field, optional_model, page_or_fragment

PRESENCES = ("online", "late", "offline")


def presence_windows() -> tuple[timedelta, timedelta]:
    """(late after, offline after): 1.5 intervals and 3 intervals plus a grace, as in issue 3."""
    interval = settings.EDGEFLEET.get("TELEMETRY_INTERVAL_S", 10)
    return timedelta(seconds=1.5 * interval), timedelta(seconds=3 * interval + 30)


def presence_q(presence: str) -> Q:
    """Active devices that are online / late / offline. Uses the presence the beat task stores
    (DevicePresence) when that module exists; otherwise derives it from last_seen with the same
    windows. An active device that never reported counts as offline."""
    active = Q(status=DeviceStatus.ACTIVE)
    if optional_model("fleet", "DevicePresence") is not None:
        if presence == "offline":
            return active & (Q(presence__state="offline") | Q(presence__isnull=True))
        return active & Q(presence__state=presence)
    late_after, offline_after = presence_windows()
    now = timezone.now()
    if presence == "online":
        return active & Q(last_seen__gte=now - late_after)
    if presence == "late":
        return active & Q(last_seen__lt=now - late_after, last_seen__gte=now - offline_after)
    return active & (Q(last_seen__lt=now - offline_after) | Q(last_seen__isnull=True))


def device_counts() -> dict:
    """All device tiles in one aggregate query."""
    aggregates = {p: Count("id", filter=presence_q(p)) for p in PRESENCES}
    aggregates.update({s.value: Count("id", filter=Q(status=s.value)) for s in DeviceStatus})
    aggregates["total"] = Count("id", filter=~Q(status=DeviceStatus.DECOMMISSIONED))
    return Device.objects.aggregate(**aggregates)


def firing_alerts(limit: int = 8):
    """(count, latest few) of firing alerts, or None while the alerts module does not exist."""
    Alert = optional_model("fleet", "Alert")
    if Alert is None:
        return None
    if model_has_field(Alert, "state"):
        qs = Alert.objects.filter(state="firing")
    elif model_has_field(Alert, "status"):
        qs = Alert.objects.filter(status="firing")
    elif model_has_field(Alert, "resolved_at"):
        qs = Alert.objects.filter(resolved_at__isnull=True)
    else:
        return None
    related = [f for f in ("device", "rule") if model_has_field(Alert, f)]
    order = "-fired_at" if model_has_field(Alert, "fired_at") else "-pk"
    return {"count": qs.count(), "items": list(qs.select_related(*related).order_by(order)[:limit])}


def running_jobs(limit: int = 6):
    from compression.models import CompressionJob, JobStatus

    qs = CompressionJob.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    return {"count": qs.count(),
            "items": list(qs.select_related("version__model").order_by("-created_at")[:limit])}


def active_rollouts(limit: int = 6):
    Deployment = optional_model("fleet", "Deployment")
    if Deployment is None:
        return None
    field = next((f for f in ("status", "state") if model_has_field(Deployment, f)), None)
    if field is None:
        return None
    qs = Deployment.objects.filter(**{f"{field}__in": ["active", "paused"]})
    related = ["model"] if model_has_field(Deployment, "model") else []
    return {"count": qs.count(), "items": list(qs.select_related(*related).order_by("-pk")[:limit])}


HEALTH_CACHE_KEY, HEALTH_CACHE_S = "dashboard:fleet-health", 20


def fleet_health():
    """Fleet CPU, memory and disk over the last five minutes, cached for 20 s: with 10,000
    devices the aggregate reads ~50,000 rollup rows (a few hundred ms), and every open overview
    polls every 5 s, so the figures are shared rather than recomputed per request."""
    from django.core.cache import cache

    return cache.get_or_set(HEALTH_CACHE_KEY, _fleet_health, HEALTH_CACHE_S)


def _fleet_health():
    """One aggregate query over the last five minutes of 1-minute rollups; None until the
    telemetry module exists or while nothing has reported."""
    Rollup1m = optional_model("fleet", "Rollup1m")
    if Rollup1m is None:
        return None
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
