"""Devices: the filterable list with bulk actions, pending admissions, and one device's page."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from rest_framework.exceptions import ValidationError as DrfValidationError

from fleet import services
from fleet.filters import DeviceFilter
from fleet.forms import BulkActionForm, LabelsForm, labels_text
from fleet.models import (
    Alert,
    AuditEvent,
    DeploymentReport,
    Device,
    DeviceAssignment,
    DeviceStatus,
    Rollup1h,
    Rollup1m,
)
from fleet.roles import OPERATOR

from ._base import (
    client_ip,
    page_or_fragment,
    require_role,
)
from .overview import PRESENCES, presence_q

SORTS = {
    "name": ("name", "id"),
    "-name": ("-name", "-id"),
    "status": ("status", "name"),
    "-status": ("-status", "name"),
    "last_seen": ("last_seen", "name"),
    "-last_seen": ("-last_seen", "name"),
    "created": ("created_at", "id"),
    "-created": ("-created_at", "-id"),
}
PAGE_SIZES = (25, 50, 100)
# Columns the list needs; the inventory JSON can be large and is left in the database.
LIST_FIELDS = ("id", "name", "status", "labels", "arch", "cpu_cores", "memory_total_bytes",
               "agent_version", "last_seen", "created_at", "os", "hostname")


def _safe_next(request, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return default


def filtered_devices(request):
    """(queryset, filterset, error) for the list's query parameters."""
    data = request.GET.copy()
    presence = data.pop("presence", [""])[-1]
    data.setlist("status", [s for s in data.getlist("status") if s])
    data.setlist("label", [v for v in data.getlist("label") if v.strip()])
    base = Device.objects.select_related("presence").only(*LIST_FIELDS, "presence__state", "presence__since")
    filterset = DeviceFilter(data, queryset=base)
    error = None
    try:
        queryset = filterset.qs if filterset.is_valid() else Device.objects.none()
        if not filterset.is_valid():
            error = "; ".join(f"{k}: {' '.join(v)}" for k, v in filterset.errors.items())
    except (DrfValidationError, ValidationError) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "messages", exc)
        if isinstance(detail, dict):
            detail = "; ".join(str(m) for v in detail.values() for m in (v if isinstance(v, list) else [v]))
        error, queryset = str(detail), Device.objects.none()
    if "status" not in data or not data.getlist("status"):
        queryset = queryset.exclude(status=DeviceStatus.DECOMMISSIONED)
    if presence in PRESENCES:
        queryset = queryset.filter(presence_q(presence))
    q = request.GET.get("q", "").strip()
    if q:
        queryset = queryset.filter(Q(name__icontains=q) | Q(hostname__icontains=q) | Q(fingerprint__icontains=q))
    return queryset, filterset, error, q, presence


@login_required
def device_list(request):
    queryset, filterset, error, q, presence = filtered_devices(request)
    sort = request.GET.get("sort", "name")
    queryset = queryset.order_by(*SORTS.get(sort, SORTS["name"]))
    try:
        per_page = int(request.GET.get("per_page", 50))
    except ValueError:
        per_page = 50
    per_page = per_page if per_page in PAGE_SIZES else 50
    page = Paginator(queryset, per_page).get_page(request.GET.get("page"))
    context = {
        "page": page, "filter": filterset, "q": q, "presence": presence, "sort": sort,
        "statuses": DeviceStatus.choices, "presences": PRESENCES, "error": error,
        "selected_status": request.GET.getlist("status"),
        "label_value": request.GET.get("label", ""), "per_page": per_page, "page_sizes": PAGE_SIZES,
        "pending_count": Device.objects.filter(status=DeviceStatus.PENDING).count(),
        "bulk_form": BulkActionForm(),
    }
    return page_or_fragment(request, "fleet/devices.html", "fleet/partials/device_table.html", context,
                            status=400 if error else 200)


@require_role(OPERATOR)
def device_bulk(request):
    form = BulkActionForm(request.POST)
    back = _safe_next(request, reverse("dashboard:devices"))
    if not form.is_valid():
        for err in form.errors.get("__all__", []) + form.errors.get("devices", []) + form.errors.get("action", []):
            messages.error(request, err)
        return redirect(back)
    action = form.cleaned_data["action"]
    devices = list(Device.objects.filter(pk__in=form.cleaned_data["devices"]).order_by("name"))
    done, skipped = 0, []
    ip = client_ip(request)
    for device in devices:
        if action in ("accept", "disable", "enable"):
            try:
                services.transition_device(request.user, device, action, ip=ip)
                done += 1
            except services.InvalidTransition as exc:
                skipped.append(f"{device.name}: {exc}")
        elif action == "add_labels":
            services.update_device(request.user, device, ip=ip,
                                   labels={**device.labels, **form.cleaned_data["label_map"]})
            done += 1
        elif action == "remove_labels":
            keys = form.cleaned_data["label_keys"]
            services.update_device(request.user, device, ip=ip,
                                   labels={k: v for k, v in device.labels.items() if k not in keys})
            done += 1
    verb = dict(form.fields["action"].choices)[action]
    messages.success(request, f"{verb}: {done} device{'s' if done != 1 else ''} done.")
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        messages.warning(request, f"{len(skipped)} skipped ({shown}).")
    return redirect(back)


@login_required
def pending(request):
    devices = (Device.objects.filter(status=DeviceStatus.PENDING).only(*LIST_FIELDS, "fingerprint", "enrolled_at")
               .order_by("created_at")[:200])
    return page_or_fragment(request, "fleet/pending.html", "fleet/partials/pending_table.html",
                            {"devices": devices})


@require_role(OPERATOR)
def device_action(request, pk, action: str):
    device = get_object_or_404(Device, pk=pk)
    if action not in ("accept", "reject", "disable", "enable", "decommission"):
        messages.error(request, f"Unknown action “{action}”.")
    else:
        try:
            services.transition_device(request.user, device, action, ip=client_ip(request))
            past = {"accept": "accepted", "reject": "rejected", "disable": "disabled",
                    "enable": "enabled", "decommission": "decommissioned"}[action]
            messages.success(request, f"{device.name} {past}.")
        except services.InvalidTransition as exc:
            messages.error(request, f"{device.name}: {exc}.")
    return redirect(_safe_next(request, reverse("dashboard:device", args=[device.pk])))


@require_role(OPERATOR)
def device_labels(request, pk):
    device = get_object_or_404(Device, pk=pk)
    form = LabelsForm(request.POST)
    if form.is_valid():
        services.update_device(request.user, device, labels=form.cleaned_data["labels"], ip=client_ip(request))
        messages.success(request, f"Labels of {device.name} saved.")
    else:
        messages.error(request, "Labels not saved: " + " ".join(form.errors.get("labels", [])))
    return redirect("dashboard:device", pk=device.pk)


def _device_alerts(device):
    return list(Alert.objects.filter(device=device).select_related("rule").order_by("-started_at", "-id")[:20])


def _device_deployments(device):
    """(current assignments, recent reports)."""
    assignments = list(DeviceAssignment.objects.filter(device=device)
                       .select_related("deployment", "model", "variant", "previous_variant")
                       .order_by("-created_at")[:30])
    reports = list(DeploymentReport.objects.filter(device=device).order_by("-received_at", "-id")[:30])
    return assignments, reports


@login_required
def device_detail(request, pk):
    device = get_object_or_404(Device.objects.select_related("enrolled_with", "presence"), pk=pk)
    audit = AuditEvent.objects.filter(object_type="fleet.device", object_id=str(device.pk))[:30]
    assignments, reports = _device_deployments(device)
    return render(request, "fleet/device_detail.html", {
        "device": device,
        "labels_text": labels_text(device.labels),
        "audit": audit,
        "alerts": _device_alerts(device),
        "assignments": assignments,
        "reports": reports,
        "ranges": RANGES,
        "presence": _presence_of(device),
    })


def _presence_of(device) -> str | None:
    """An active device without a stored presence has never reported: offline, as in ``presence_q``."""
    if device.status != DeviceStatus.ACTIVE:
        return None
    try:
        return device.presence.state
    except ObjectDoesNotExist:
        return "offline"


RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}


def device_series(device, seconds: int) -> dict:
    """Column arrays for uPlot from the 1-minute rollups (up to 24 h) or the 1-hour ones (7 d):
    ts in epoch seconds; CPU, memory and disk in percent; network in bytes/s; temperature in °C.
    Memory and disk are percentages of the totals reported in the same bucket."""
    model = Rollup1m if seconds <= 86400 else Rollup1h
    since = timezone.now() - timedelta(seconds=seconds)
    rows = (model.objects.filter(device=device, bucket__gte=since).order_by("bucket")
            .values_list("bucket", "cpu_percent_avg", "cpu_percent_max", "mem_used_bytes_avg", "mem_total_bytes_avg",
                         "disk_used_bytes_avg", "disk_total_bytes_avg", "net_rx_bytes_per_s_avg",
                         "net_tx_bytes_per_s_avg", "temperature_c_avg"))

    def share(used, total):
        return round(100.0 * used / total, 2) if used is not None and total else None

    def r(v, nd=2):
        return round(v, nd) if v is not None else None

    out = {k: [] for k in ("ts", "cpu", "cpu_max", "mem", "disk", "net_rx", "net_tx", "temp")}
    for bucket, cpu, cpu_max, mu, mt, du, dt, rx, tx, temp in rows:
        out["ts"].append(int(bucket.timestamp()))
        out["cpu"].append(r(cpu))
        out["cpu_max"].append(r(cpu_max))
        out["mem"].append(share(mu, mt))
        out["disk"].append(share(du, dt))
        out["net_rx"].append(r(rx, 0))
        out["net_tx"].append(r(tx, 0))
        out["temp"].append(r(temp, 1))
    out["step_s"] = 60 if model is Rollup1m else 3600
    return out


@login_required
def device_metrics(request, pk):
    """Chart data as column arrays for uPlot (see ``device_series``)."""
    device = get_object_or_404(Device.objects.only("id"), pk=pk)
    range_name = request.GET.get("range", "1h")
    if range_name not in RANGES:
        return JsonResponse({"error": f"range must be one of {', '.join(RANGES)}"}, status=400)
    return JsonResponse({"range": range_name, **device_series(device, RANGES[range_name])})
