"""Webhook notifications of alerts: a delivery row per (alert, event), POSTed by a Celery task.

Only transient failures are retried (no answer, timeouts, 429 and 5xx), with exponential backoff
and a bounded number of attempts; any other answer is final. The delivery row keeps the outcome,
so the dashboard never asks the broker.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet.models import Alert, DeliveryState, WebhookDelivery

USER_AGENT = "EdgeFleet-Alerts/1"


def payload(alert: Alert, event: str) -> dict:
    """The JSON document a receiver gets."""
    device = alert.device
    rule = alert.rule
    return {
        "event": event,
        "alert": {
            "id": alert.pk,
            "kind": alert.kind,
            "state": alert.state,
            "started_at": alert.started_at.isoformat() if alert.started_at else None,
            "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
            "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
            "value": alert.value,
            "last_value": alert.last_value,
        },
        "rule": None if rule is None else {
            "id": rule.pk, "name": rule.name, "metric": rule.metric, "comparison": rule.comparison,
            "threshold": rule.threshold, "clear_threshold": rule.effective_clear_threshold,
            "for_s": rule.for_s,
        },
        "device": {"id": str(device.pk), "name": device.name, "labels": device.labels},
    }


def notify(alert: Alert, event: str, url: str) -> WebhookDelivery | None:
    """Record a delivery for ``alert`` and send it once the transaction commits."""
    if not url:
        return None
    delivery = WebhookDelivery.objects.create(alert=alert, url=url, event=event,
                                              payload=payload(alert, event))
    from fleet.telemetry.tasks import deliver_webhook

    transaction.on_commit(lambda: deliver_webhook.delay(delivery.pk))
    return delivery


class Transient(Exception):
    """Worth another try later."""


def post(url: str, body: dict, timeout: float) -> int:
    """POST JSON; the status code. Raises Transient for no answer, 429 and 5xx."""
    data = json.dumps(body, separators=(",", ":")).encode()
    request = urllib.request.Request(  # noqa: S310 - operators set http(s) URLs (URLField)
        url, data=data, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as exc:
        if exc.code == 429 or exc.code >= 500:
            raise Transient(f"HTTP {exc.code}") from None
        return exc.code
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise Transient(str(getattr(exc, "reason", exc))) from None


def deliver(delivery_id: int, *, final_attempt: bool) -> str:
    """One attempt: "delivered", "failed" (final) or "retry"."""
    delivery = WebhookDelivery.objects.select_related("alert").get(pk=delivery_id)
    if delivery.state != DeliveryState.PENDING:
        return delivery.state
    delivery.attempts += 1
    timeout = settings.EDGEFLEET_TELEMETRY["WEBHOOK_TIMEOUT_S"]
    try:
        status = post(delivery.url, delivery.payload, timeout)
    except Transient as exc:
        delivery.last_error = str(exc)[:1000]
        delivery.state = DeliveryState.FAILED if final_attempt else DeliveryState.PENDING
        delivery.save(update_fields=["attempts", "last_error", "state"])
        return "failed" if final_attempt else "retry"
    delivery.response_status = status
    if 200 <= status < 300:
        delivery.state, delivery.delivered_at, delivery.last_error = (
            DeliveryState.DELIVERED, timezone.now(), "")
    else:
        delivery.state, delivery.last_error = DeliveryState.FAILED, f"HTTP {status} (not retried)"
    delivery.save(update_fields=["attempts", "response_status", "state", "delivered_at", "last_error"])
    return delivery.state
