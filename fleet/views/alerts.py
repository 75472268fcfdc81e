"""Alerts (firing, pending, resolved) and alert rules. Rules are edited here with the model's own
validation (``AlertRule.clean``) and every change goes to the audit log."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render

from fleet.forms import LabelsField, labels_text
from fleet.models import Alert, AlertRule
from fleet.roles import OPERATOR, has_role
from fleet.telemetry import rules

from ._base import client_ip, forbidden, page_or_fragment, require_role


@login_required
def alert_list(request):
    state = request.GET.get("state", "open")
    qs = Alert.objects.select_related("device", "rule").order_by("-started_at", "-id")
    if state == "open":
        qs = qs.filter(state__in=["firing", "pending"])
    elif state in ("firing", "pending", "resolved"):
        qs = qs.filter(state=state)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    return page_or_fragment(request, "fleet/alerts.html", "fleet/partials/alert_table.html", {
        "page": page, "state": state, "states": ["open", "firing", "pending", "resolved", "all"],
        "rules": AlertRule.objects.order_by("name", "id"),
    })


class AlertRuleForm(forms.ModelForm):
    label_selector = LabelsField(required=False, help_text="e.g. site=berlin; empty: every device.")
    webhook_url = forms.URLField(required=False, max_length=500, assume_scheme="https",
                                 help_text="Optional: POSTed a JSON document when it fires and resolves.")

    class Meta:
        model = AlertRule
        fields = ["name", "metric", "comparison", "threshold", "clear_threshold", "for_s", "window_s",
                  "label_selector", "enabled", "webhook_url"]
        labels = {"for_s": "For (seconds)", "window_s": "Averaged over (seconds)"}


@login_required
def rule_edit(request, pk=None):
    rule = get_object_or_404(AlertRule, pk=pk) if pk else None
    if request.method == "POST":
        if not has_role(request.user, OPERATOR):
            return forbidden(request, OPERATOR)
        form = AlertRuleForm(request.POST, instance=rule)
        if form.is_valid():
            # The same service as the API: validation, row lock and audit live there.
            data = {k: v for k, v in form.cleaned_data.items() if k in rules.FIELDS}
            try:
                if rule is None:
                    saved = rules.create_rule(request.user, ip=client_ip(request), **data)
                else:
                    saved = rules.update_rule(request.user, rule, ip=client_ip(request), **data)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                messages.success(request, f"Alert rule “{saved.name}” saved.")
                return redirect("dashboard:alerts")
        status = 400
    else:
        initial = {"label_selector": labels_text(rule.label_selector)} if rule else {}
        form = AlertRuleForm(instance=rule, initial=initial)
        status = 200
    return render(request, "fleet/rule_form.html", {"form": form, "rule": rule}, status=status)


@require_role(OPERATOR)
def rule_delete(request, pk):
    rule = get_object_or_404(AlertRule, pk=pk)
    rules.delete_rule(request.user, rule, ip=client_ip(request))
    messages.success(request, f"Alert rule “{rule.name}” deleted.")
    return redirect("dashboard:alerts")
