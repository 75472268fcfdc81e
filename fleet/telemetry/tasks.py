"""Beat tasks of telemetry: thin wrappers that pass the current time to the services."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from . import alerts, presence, retention, rollups, webhooks


@shared_task(name="fleet.telemetry.presence", ignore_result=True)
def presence_task() -> dict:
    return presence.evaluate_presence(timezone.now())


@shared_task(name="fleet.telemetry.alerts", ignore_result=True)
def alerts_task() -> dict:
    return alerts.evaluate_alerts(timezone.now())


@shared_task(name="fleet.telemetry.rollups", ignore_result=True)
def rollups_task() -> dict:
    return rollups.run_rollups(timezone.now())


@shared_task(name="fleet.telemetry.retention", ignore_result=True)
def retention_task() -> dict:
    result = retention.apply_retention(timezone.now())
    return {k: v for k, v in result.items() if isinstance(v, int)}


@shared_task(name="fleet.telemetry.deliver_webhook", bind=True, ignore_result=True, max_retries=None)
def deliver_webhook(self, delivery_id: int) -> str:
    """One delivery attempt; transient failures come back with exponential backoff, up to
    ``WEBHOOK_MAX_RETRIES`` more attempts."""
    from django.conf import settings

    limit = settings.EDGEFLEET_TELEMETRY["WEBHOOK_MAX_RETRIES"]
    outcome = webhooks.deliver(delivery_id, final_attempt=self.request.retries >= limit)
    if outcome == "retry":
        raise self.retry(countdown=min(10 * 2**self.request.retries, 900))
    return outcome
