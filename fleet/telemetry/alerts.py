"""Alert evaluation: metric rules with a ``for`` duration and hysteresis, and the built-in
offline alert. Run by beat every 30 s with the current time; tests pass their own ``now``.

A rule's value for a device is the mean of the metric over the rule's window (``window_s``, 60 s
by default) ending at ``now``. States:

- condition true, no open alert: a *pending* alert starts (or *firing* at once when ``for_s`` = 0);
- pending, and the condition has held for ``for_s``: *firing* (webhook "fired");
- pending, condition false: the pending alert is forgotten (it never fired);
- firing: it *resolves* only when the value is back past the clear threshold (hysteresis), not
  merely below the threshold (webhook "resolved");
- no data in the window: nothing changes (the offline alert speaks for silent devices).

The offline alert fires when a device's presence is ``offline`` and resolves when it is not.
"""

from __future__ import annotations

import operator
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Avg

from fleet.models import (
    Alert,
    AlertKind,
    AlertRule,
    AlertState,
    Comparison,
    Device,
    DevicePresence,
    DeviceStatus,
    PresenceState,
    TelemetrySample,
)

from . import webhooks

_FIRES = {
    Comparison.GT: operator.gt,
    Comparison.GTE: operator.ge,
    Comparison.LT: operator.lt,
    Comparison.LTE: operator.le,
}
# The value is healthy again when it is on the other side of the clear threshold.
_CLEARS = {
    Comparison.GT: operator.le,
    Comparison.GTE: operator.lt,
    Comparison.LT: operator.ge,
    Comparison.LTE: operator.gt,
}
OPEN = (AlertState.PENDING, AlertState.FIRING)


def fires(rule: AlertRule, value: float) -> bool:
    return _FIRES[rule.comparison](value, rule.threshold)


def clears(rule: AlertRule, value: float) -> bool:
    return _CLEARS[rule.comparison](value, rule.effective_clear_threshold)


def matches(selector: dict, labels: dict) -> bool:
    return all(str(labels.get(k)) == str(v) for k, v in (selector or {}).items())


def metric_means(metric: str, start: datetime, end: datetime) -> dict:
    """device_id -> mean of ``metric`` over samples with ts in (start, end]."""
    rows = (
        TelemetrySample.objects.filter(ts__gt=start, ts__lte=end, **{f"{metric}__isnull": False})
        .values("device_id").annotate(v=Avg(metric)).order_by()
    )
    return {row["device_id"]: row["v"] for row in rows}


def _transition(alert: Alert, state: str, now: datetime, value: float | None, notify: list) -> None:
    alert.state = state
    if state == AlertState.FIRING:
        alert.fired_at, alert.value = now, value
        notify.append((alert, "fired"))
    elif state == AlertState.RESOLVED:
        alert.resolved_at = now
        if alert.fired_at is not None:
            notify.append((alert, "resolved"))


def evaluate_rule(rule: AlertRule, devices: dict, now: datetime, means_cache: dict) -> dict:
    """Apply one rule to the active devices (``{id: labels}``). Returns counts of changes."""
    counts = {"fired": 0, "resolved": 0, "pending": 0}
    open_alerts = {a.device_id: a for a in Alert.objects.filter(rule=rule, state__in=OPEN)}
    notify: list = []
    to_save: list[Alert] = []
    to_create: list[Alert] = []
    to_forget: list[int] = []

    def end_all_open():
        """A pending alert is forgotten; a firing one resolves."""
        for alert in open_alerts.values():
            if alert.state == AlertState.PENDING:
                to_forget.append(alert.pk)
            else:
                _transition(alert, AlertState.RESOLVED, now, None, notify)
                to_save.append(alert)

    if not rule.enabled:
        end_all_open()
    else:
        key = (rule.metric, rule.window_s)
        if key not in means_cache:
            means_cache[key] = metric_means(rule.metric, now - timedelta(seconds=rule.window_s), now)
        means = means_cache[key]
        for device_id, labels in devices.items():
            alert = open_alerts.pop(device_id, None)
            if not matches(rule.label_selector, labels):
                if alert is not None:  # the device left the rule's scope
                    open_alerts[device_id] = alert
                continue
            value = means.get(device_id)
            if value is None:
                continue
            if alert is None:
                if fires(rule, value):
                    alert = Alert(kind=AlertKind.METRIC, rule=rule, device_id=device_id,
                                  state=AlertState.PENDING, started_at=now, last_value=value)
                    if rule.for_s == 0:
                        _transition(alert, AlertState.FIRING, now, value, notify)
                    to_create.append(alert)
                continue
            alert.last_value = value
            if alert.state == AlertState.PENDING:
                if not fires(rule, value):
                    to_forget.append(alert.pk)
                    continue
                if (now - alert.started_at).total_seconds() >= rule.for_s:
                    _transition(alert, AlertState.FIRING, now, value, notify)
            elif clears(rule, value):
                _transition(alert, AlertState.RESOLVED, now, value, notify)
            to_save.append(alert)
        end_all_open()  # devices no longer in scope (or no longer active)
    with transaction.atomic():
        Alert.objects.bulk_create(to_create)
        Alert.objects.bulk_update(to_save, ["state", "fired_at", "resolved_at", "value", "last_value"])
        Alert.objects.filter(pk__in=to_forget).delete()
        for alert, event in notify:
            counts[event] += 1
            webhooks.notify(alert, event, rule.webhook_url)
    counts["pending"] = sum(1 for a in to_create if a.state == AlertState.PENDING)
    return counts


def evaluate_offline(now: datetime) -> dict:
    """Open an offline alert for each offline device; resolve those that came back."""
    counts = {"fired": 0, "resolved": 0}
    url = settings.EDGEFLEET_TELEMETRY.get("OFFLINE_WEBHOOK_URL", "")
    offline = dict(
        DevicePresence.objects.filter(state=PresenceState.OFFLINE, device__status=DeviceStatus.ACTIVE)
        .values_list("device_id", "since")
    )
    open_alerts = {a.device_id: a for a in Alert.objects.filter(kind=AlertKind.OFFLINE, state__in=OPEN)}
    notify: list = []
    created, resolved = [], []
    for device_id, since in offline.items():
        if device_id not in open_alerts:
            alert = Alert(kind=AlertKind.OFFLINE, device_id=device_id, state=AlertState.PENDING,
                          started_at=since)
            _transition(alert, AlertState.FIRING, now, None, notify)
            created.append(alert)
    for device_id, alert in open_alerts.items():
        if device_id not in offline:
            _transition(alert, AlertState.RESOLVED, now, None, notify)
            resolved.append(alert)
    with transaction.atomic():
        Alert.objects.bulk_create(created)
        Alert.objects.bulk_update(resolved, ["state", "resolved_at"])
        for alert, event in notify:
            counts[event] += 1
            webhooks.notify(alert, event, url)
    return counts


def evaluate_alerts(now: datetime) -> dict:
    """Every enabled (and recently disabled) rule, then the offline alert."""
    devices = dict(Device.objects.filter(status=DeviceStatus.ACTIVE).values_list("id", "labels"))
    means_cache: dict = {}
    totals = {"fired": 0, "resolved": 0, "pending": 0}
    rules = AlertRule.objects.all()
    for rule in rules:
        if not rule.enabled and not Alert.objects.filter(rule=rule, state__in=OPEN).exists():
            continue
        for key, n in evaluate_rule(rule, devices, now, means_cache).items():
            totals[key] += n
    offline = evaluate_offline(now)
    totals["offline_fired"], totals["offline_resolved"] = offline["fired"], offline["resolved"]
    return totals
