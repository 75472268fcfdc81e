"""The audit log, filterable by action, object, actor and time."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator

from fleet.filters import AuditEventFilter
from fleet.models import AuditEvent

from ._base import page_or_fragment


@login_required
def audit_log(request):
    data = request.GET.copy()
    for key in list(data):
        if not data.get(key):
            data.pop(key)
    # Free-text boxes: "device." matches every device action, "otto" any actor containing it.
    action = data.pop("action", [""])[-1].strip()
    actor = data.pop("actor", [""])[-1].strip()
    filterset = AuditEventFilter(data, queryset=AuditEvent.objects.all())
    error = None
    if filterset.is_valid():
        qs = filterset.qs
    else:
        qs = AuditEvent.objects.none()
        error = "; ".join(f"{k}: {' '.join(v)}" for k, v in filterset.errors.items())
    if action:
        qs = qs.filter(action__startswith=action)
    if actor:
        qs = qs.filter(actor__icontains=actor)
    page = Paginator(qs.order_by("-created_at", "-id"), 50).get_page(request.GET.get("page"))
    actions = (AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct()[:200])
    return page_or_fragment(request, "fleet/audit.html", "fleet/partials/audit_table.html", {
        "page": page, "error": error, "actions": actions,
        "f": {k: request.GET.get(k, "") for k in ("action", "actor", "object_type", "object_id", "since", "until")},
    }, status=400 if error else 200)
