"""Alert rule changes by operators, each recorded in the audit log in the same transaction."""

from __future__ import annotations

from django.db import transaction

from fleet import audit
from fleet.models import AlertRule

FIELDS = ("name", "metric", "comparison", "threshold", "clear_threshold", "for_s", "window_s",
          "label_selector", "enabled", "webhook_url")


def create_rule(user, *, ip: str | None = None, **data) -> AlertRule:
    """Create a rule (validated by ``AlertRule.clean``)."""
    rule = AlertRule(**{k: v for k, v in data.items() if k in FIELDS})
    rule.created_by = user if getattr(user, "pk", None) else None
    rule.full_clean()
    with transaction.atomic():
        rule.save()
        audit.record(user, "alert_rule.create", rule, after=rule.snapshot(), ip=ip)
    return rule


def update_rule(user, rule: AlertRule, *, ip: str | None = None, **changes) -> AlertRule:
    """Change a rule; open alerts are re-evaluated against the new rule on the next run."""
    with transaction.atomic():
        rule = AlertRule.objects.select_for_update().get(pk=rule.pk)
        before = rule.snapshot()
        for key, value in changes.items():
            if key in FIELDS:
                setattr(rule, key, value)
        rule.full_clean()
        if rule.snapshot() != before:
            rule.save()
            audit.record(user, "alert_rule.update", rule, before=before, after=rule.snapshot(), ip=ip)
    return rule


def delete_rule(user, rule: AlertRule, *, ip: str | None = None) -> None:
    """Delete a rule and its alerts."""
    with transaction.atomic():
        audit.record(user, "alert_rule.delete", rule, before=rule.snapshot(), ip=ip)
        rule.delete()
