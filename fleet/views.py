"""Dashboard pages (server-rendered; htmx requests get just the fragment)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count
from django.shortcuts import render

from .filters import DeviceFilter
from .models import Device, DeviceStatus


@login_required
def overview(request):
    counts = dict(Device.objects.values_list("status").annotate(n=Count("id")).order_by())
    return render(request, "fleet/overview.html", {
        "counts": {s.value: counts.get(s.value, 0) for s in DeviceStatus},
        "total": sum(counts.values()),
    })


@login_required
def device_list(request):
    filterset = DeviceFilter(request.GET, queryset=Device.objects.all())
    queryset = filterset.qs if filterset.is_valid() else Device.objects.none()
    q = request.GET.get("q", "").strip()
    if q:
        queryset = queryset.filter(name__icontains=q)
    page = Paginator(queryset.order_by("name", "id"), 50).get_page(request.GET.get("page"))
    template = "fleet/partials/device_table.html" if request.headers.get("HX-Request") else "fleet/devices.html"
    return render(request, template, {"page": page, "filter": filterset, "q": q, "statuses": DeviceStatus.choices})
