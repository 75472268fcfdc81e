"""Deployments: create with a target preview, watch the rollout phase by phase, pause, resume,
abort or roll back. The rollout logic is ``fleet.rollouts``; these views only call it."""

from __future__ import annotations

from collections import defaultdict

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render

from compression.models import AIModel, ModelVersion, Variant
from fleet import rollouts
from fleet.forms import LabelsField
from fleet.models import Deployment, Device, DeviceStatus
from fleet.roles import OPERATOR, has_role

from ._base import (
    client_ip,
    forbidden,
    page_or_fragment,
    require_role,
)


def _phases(text: str) -> list:
    out = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


class DeploymentForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    model = forms.ModelChoiceField(queryset=AIModel.objects.order_by("name"), empty_label=None)
    version = forms.ModelChoiceField(queryset=ModelVersion.objects.select_related("model"), required=False,
                                     empty_label="latest version when it starts")
    target_kind = forms.ChoiceField(choices=[("labels", "Devices with labels"), ("all", "All active devices"),
                                             ("devices", "Chosen devices")], initial="labels")
    target_labels = LabelsField(required=False, label="Label selector", help_text="e.g. site=berlin, line=3")
    target_devices = forms.ModelMultipleChoiceField(
        queryset=Device.objects.filter(status=DeviceStatus.ACTIVE).order_by("name"), required=False,
        widget=forms.SelectMultiple(attrs={"size": 6}))
    variant_policy = forms.ChoiceField(choices=[("auto", "auto: best fitting variant per device"),
                                                ("pinned", "pinned: one variant for every device")])
    pinned_variant = forms.ModelChoiceField(queryset=Variant.objects.none(), required=False)
    phases = forms.CharField(initial="1, 10%, 50%, 100%", help_text="Counts or percentages, cumulative.")
    success_share = forms.FloatField(min_value=0.01, max_value=1, initial=1.0,
                                     help_text="Share of a phase installed and healthy before the next one.")
    soak_seconds = forms.IntegerField(min_value=0, max_value=7 * 86400, initial=300)
    error_threshold = forms.CharField(initial="0", help_text="Failures tolerated before auto-pause: 0, 3 or 10%.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["pinned_variant"].queryset = Variant.objects.deployable().select_related("source__model")

    def build(self):
        """An unsaved Deployment validated by the model's own clean()."""
        d = self.cleaned_data
        threshold = d["error_threshold"].strip()
        dep = Deployment(
            name=d["name"], model=d["model"], version=d["version"], target_kind=d["target_kind"],
            target_labels=d["target_labels"] or {}, variant_policy=d["variant_policy"],
            pinned_variant=d["pinned_variant"], phases=_phases(d["phases"]), success_share=d["success_share"],
            soak_seconds=d["soak_seconds"], error_threshold=int(threshold) if threshold.isdigit() else threshold,
        )
        try:
            dep.full_clean(exclude=["created_by", "resolved_version"])
        except ValidationError as exc:
            for field, errs in exc.message_dict.items():
                self.add_error(field if field in self.fields else None, errs)
            return None
        if d["target_kind"] == "devices" and not d["target_devices"]:
            self.add_error("target_devices", "Choose at least one device.")
            return None
        return dep


@login_required
def deployment_list(request):
    qs = (Deployment.objects.select_related("model", "resolved_version", "version")
          .annotate(n_total=Count("assignments"),
                    n_installed=Count("assignments", filter=Q(assignments__state="installed")),
                    n_failed=Count("assignments", filter=Q(assignments__state="failed")))
          .order_by("-created_at"))
    state = request.GET.get("state", "")
    if state:
        qs = qs.filter(state=state)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    return page_or_fragment(request, "fleet/deployments.html", "fleet/partials/deployment_table.html",
                            {"page": page, "state": state})


@login_required
def deployment_new(request):
    if not has_role(request.user, OPERATOR):
        return forbidden(request, OPERATOR)
    initial = {"model": request.GET.get("model")}
    if request.GET.get("variant"):  # "Deploy this variant" from a job or variant page
        initial.update(variant_policy="pinned", pinned_variant=request.GET["variant"])
    form = DeploymentForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        dep = form.build()
        if dep is not None:
            dep = rollouts.create(request.user, dep, target_devices=form.cleaned_data["target_devices"],
                                  ip=client_ip(request))
            if "start" in request.POST:
                try:
                    rollouts.start(request.user, dep, ip=client_ip(request))
                    messages.success(request, f"Deployment {dep} started.")
                except Exception as exc:  # RolloutError and the health check's errors
                    messages.error(request, f"Created as a draft but could not start: {exc}")
            else:
                messages.success(request, f"Deployment {dep} saved as a draft.")
            return redirect("dashboard:deployment", pk=dep.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "fleet/deployment_new.html", {"form": form}, status=status)


@login_required
def deployment_preview(request):
    """htmx: which devices the form's target matches and which variant each would get."""
    form = DeploymentForm(request.POST or request.GET or None)
    result, error = None, None
    if form.is_valid():
        dep = form.build()
        if dep is not None:
            ids = [d.pk for d in form.cleaned_data["target_devices"]] if dep.target_kind == "devices" else None
            try:
                result = rollouts.preview(dep, ids)
            except Exception as exc:  # a placement error must read as a message, not a 500
                error = str(exc)
            else:
                # Name each chosen variant (one query) and list the devices phase by phase.
                chosen = {r["variant_id"] for r in result.get("devices", []) if r.get("variant_id")}
                variants = Variant.objects.only("id", "recipe", "size_bytes").in_bulk(chosen)
                for r in result.get("devices", []):
                    r["variant"] = variants.get(r.get("variant_id")) or variants.get(_uuid(r.get("variant_id")))
                result["devices"] = sorted(result.get("devices", []), key=lambda r: (r["phase"], r["device"]))
    if form.errors and not error:
        error = "; ".join(f"{k if k != '__all__' else ''} {' '.join(v)}".strip() for k, v in form.errors.items())
    return render(request, "fleet/partials/deployment_preview.html", {"result": result, "error": error})


def _uuid(value):
    import uuid

    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def deployment_context(dep) -> dict:
    rows = dep.assignments.values("phase", "state").annotate(n=Count("id")).order_by("phase")
    phases: dict[int, dict] = defaultdict(lambda: {"total": 0, "states": {}})
    for r in rows:
        phases[r["phase"]]["total"] += r["n"]
        phases[r["phase"]]["states"][r["state"]] = r["n"]
    phase_list = []
    for idx in sorted(phases):
        p = phases[idx]
        done = p["states"].get("installed", 0)
        failed = p["states"].get("failed", 0) + p["states"].get("rolled_back", 0)
        phase_list.append({"index": idx, "total": p["total"], "states": p["states"], "installed": done,
                           "failed": failed, "pct": round(100 * done / p["total"]) if p["total"] else 0,
                           "fail_pct": round(100 * failed / p["total"]) if p["total"] else 0,
                           "released": idx <= dep.current_phase})
    assignments = dep.assignments.select_related("device", "variant").order_by("phase", "order")[:500]
    return {"dep": dep, "phases": phase_list, "assignments": assignments,
            "live": dep.state in ("active", "paused")}


@login_required
def deployment_detail(request, pk):
    dep = get_object_or_404(Deployment.objects.select_related("model", "version", "resolved_version",
                                                              "pinned_variant", "created_by"), pk=pk)
    return page_or_fragment(request, "fleet/deployment_detail.html", "fleet/partials/deployment_live.html",
                            deployment_context(dep))


ACTIONS = {"start": "start", "pause": "pause", "resume": "resume", "abort": "abort", "rollback": "roll_back",
           "retry": "retry_failed"}


@require_role(OPERATOR)
def deployment_action(request, pk, action: str):
    dep = get_object_or_404(Deployment, pk=pk)
    func = getattr(rollouts, ACTIONS.get(action, ""), None)
    if func is None:
        messages.error(request, f"“{action}” is not available.")
        return redirect("dashboard:deployment", pk=dep.pk)
    try:
        func(request.user, dep, ip=client_ip(request))
        messages.success(request, {"start": "Started.", "pause": "Paused.", "resume": "Resumed.",
                                   "abort": "Aborted: no further phases are released.",
                                   "rollback": "Rolling back every device to what it ran before.",
                                   "retry": "Failed devices are being retried."}[action])
    except Exception as exc:  # RolloutError: an action that does not apply now
        messages.error(request, f"Cannot {action}: {exc}")
    return redirect("dashboard:deployment", pk=dep.pk)
