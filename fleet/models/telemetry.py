"""Telemetry: raw samples, their 1-minute and 1-hour rollups, presence, alert rules and alerts.

Storage layout (see docs/telemetry.md): on PostgreSQL ``fleet_telemetrysample`` and
``fleet_rollup1m`` are partitioned by day (``fleet.telemetry.partitions``), so retention drops whole
tables instead of deleting rows; their unique keys then have to include the partition column,
hence ``(device, ts, seq)`` there and ``(device, seq)`` on SQLite. Django never needs to know:
it only reads these tables and inserts into them with raw SQL (``fleet.telemetry.ingest``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

# Metrics a sample carries, with the column type. Rollups keep min/avg/max of each.
METRICS: tuple[str, ...] = (
    "cpu_percent",
    "load_1m",
    "mem_used_bytes",
    "mem_total_bytes",
    "swap_used_bytes",
    "disk_used_bytes",
    "disk_total_bytes",
    "net_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "temperature_c",
    "agent_rss_bytes",
)


class TelemetrySample(models.Model):
    """One health sample as the agent took it. Append-only; written by raw SQL in batches."""

    device = models.ForeignKey("fleet.Device", on_delete=models.DO_NOTHING, db_constraint=False,
                               db_index=False, related_name="+")
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    cpu_percent = models.FloatField()
    load_1m = models.FloatField(null=True)
    load_5m = models.FloatField(null=True)
    load_15m = models.FloatField(null=True)
    mem_used_bytes = models.BigIntegerField()
    mem_total_bytes = models.BigIntegerField()
    swap_used_bytes = models.BigIntegerField(null=True)
    swap_total_bytes = models.BigIntegerField(null=True)
    disk_used_bytes = models.BigIntegerField(null=True)
    disk_total_bytes = models.BigIntegerField(null=True)
    net_rx_bytes_per_s = models.FloatField(null=True)
    net_tx_bytes_per_s = models.FloatField(null=True)
    temperature_c = models.FloatField(null=True)
    uptime_s = models.FloatField(null=True)
    agent_rss_bytes = models.BigIntegerField(null=True)
    agent_cpu_percent = models.FloatField(null=True)

    class Meta:
        # No FK constraint: a partitioned table's rows are dropped by the day, and a device's
        # history outlives the device row only until retention removes it.
        constraints = [models.UniqueConstraint(fields=["device", "seq"], name="fleet_sample_device_seq")]
        indexes = [models.Index(fields=["device", "ts"], name="fleet_sample_device_ts")]

    def __str__(self) -> str:
        return f"{self.device_id} #{self.seq} @ {self.ts:%Y-%m-%d %H:%M:%S}"


class _Rollup(models.Model):
    """min/avg/max of every metric over one bucket, plus how many samples (and how many of them
    had the optional temperature) it summarises."""

    device = models.ForeignKey("fleet.Device", on_delete=models.DO_NOTHING, db_constraint=False,
                               db_index=False, related_name="+")
    bucket = models.DateTimeField(help_text="Start of the bucket.")
    count = models.PositiveIntegerField()

    cpu_percent_min = models.FloatField(null=True)
    cpu_percent_avg = models.FloatField(null=True)
    cpu_percent_max = models.FloatField(null=True)
    load_1m_min = models.FloatField(null=True)
    load_1m_avg = models.FloatField(null=True)
    load_1m_max = models.FloatField(null=True)
    mem_used_bytes_min = models.FloatField(null=True)
    mem_used_bytes_avg = models.FloatField(null=True)
    mem_used_bytes_max = models.FloatField(null=True)
    mem_total_bytes_min = models.FloatField(null=True)
    mem_total_bytes_avg = models.FloatField(null=True)
    mem_total_bytes_max = models.FloatField(null=True)
    swap_used_bytes_min = models.FloatField(null=True)
    swap_used_bytes_avg = models.FloatField(null=True)
    swap_used_bytes_max = models.FloatField(null=True)
    disk_used_bytes_min = models.FloatField(null=True)
    disk_used_bytes_avg = models.FloatField(null=True)
    disk_used_bytes_max = models.FloatField(null=True)
    disk_total_bytes_min = models.FloatField(null=True)
    disk_total_bytes_avg = models.FloatField(null=True)
    disk_total_bytes_max = models.FloatField(null=True)
    net_rx_bytes_per_s_min = models.FloatField(null=True)
    net_rx_bytes_per_s_avg = models.FloatField(null=True)
    net_rx_bytes_per_s_max = models.FloatField(null=True)
    net_tx_bytes_per_s_min = models.FloatField(null=True)
    net_tx_bytes_per_s_avg = models.FloatField(null=True)
    net_tx_bytes_per_s_max = models.FloatField(null=True)
    temperature_c_min = models.FloatField(null=True)
    temperature_c_avg = models.FloatField(null=True)
    temperature_c_max = models.FloatField(null=True)
    agent_rss_bytes_min = models.FloatField(null=True)
    agent_rss_bytes_avg = models.FloatField(null=True)
    agent_rss_bytes_max = models.FloatField(null=True)
    # Per-metric counts for the metrics a sample may lack, so that 1 h averages weight correctly.
    load_1m_count = models.PositiveIntegerField(default=0)
    swap_used_bytes_count = models.PositiveIntegerField(default=0)
    disk_used_bytes_count = models.PositiveIntegerField(default=0)
    disk_total_bytes_count = models.PositiveIntegerField(default=0)
    net_rx_bytes_per_s_count = models.PositiveIntegerField(default=0)
    net_tx_bytes_per_s_count = models.PositiveIntegerField(default=0)
    temperature_c_count = models.PositiveIntegerField(default=0)
    agent_rss_bytes_count = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.device_id} {self.bucket:%Y-%m-%d %H:%M}"


class Rollup1m(_Rollup):
    """One device's metrics over one minute."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "bucket"], name="fleet_rollup1m_device_bucket")]


class Rollup1h(_Rollup):
    """One device's metrics over one hour (computed from the 1-minute rollups)."""

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "bucket"], name="fleet_rollup1h_device_bucket")]


class RollupDirty(models.Model):
    """An hour of one device that received samples late (a replay after an outage): the rollup
    task recomputes it, then deletes this row."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["device", "hour"], name="fleet_rollupdirty_device_hour")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.hour:%Y-%m-%d %H:00}"


# --- Presence ---------------------------------------------------------------------------------


class PresenceState(models.TextChoices):
    ONLINE = "online", "Online"
    LATE = "late", "Late"
    OFFLINE = "offline", "Offline"


class DevicePresence(models.Model):
    """Whether a device reports on time, since when, and its telemetry counters."""

    device = models.OneToOneField("fleet.Device", on_delete=models.CASCADE, primary_key=True,
                                  related_name="presence")
    state = models.CharField(max_length=8, choices=PresenceState.choices, db_index=True)
    since = models.DateTimeField()
    report_period_s = models.FloatField(
        null=True, blank=True, help_text="interval × batch size the agent last announced."
    )
    dropped_samples = models.BigIntegerField(
        default=0, help_text="Samples the agent dropped from its full buffer (cumulative)."
    )
    evaluated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.device_id}: {self.state} since {self.since:%Y-%m-%d %H:%M:%S}"


class PresenceEvent(models.Model):
    """A presence transition of one device (every transition is recorded)."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="presence_events")
    from_state = models.CharField(max_length=8, blank=True)
    to_state = models.CharField(max_length=8, choices=PresenceState.choices)
    at = models.DateTimeField(db_index=True)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["device", "-at"], name="fleet_presev_device_at")]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.from_state or '-'} -> {self.to_state} at {self.at}"


# --- Alerts ---------------------------------------------------------------------------------


class Comparison(models.TextChoices):
    GT = "gt", ">"
    GTE = "gte", ">="
    LT = "lt", "<"
    LTE = "lte", "<="


class AlertRule(models.Model):
    """Fire when a metric's mean over the last ``window_s`` stays beyond ``threshold`` for
    ``for_s`` seconds; resolve only once it is back past ``clear_threshold`` (hysteresis)."""

    name = models.CharField(max_length=100)
    metric = models.CharField(max_length=32, choices=[(m, m) for m in METRICS])
    comparison = models.CharField(max_length=3, choices=Comparison.choices, default=Comparison.GT)
    threshold = models.FloatField()
    clear_threshold = models.FloatField(
        null=True, blank=True, help_text="Resolve past this value; empty: the threshold itself."
    )
    for_s = models.PositiveIntegerField(default=0, help_text="Seconds the condition must hold.")
    window_s = models.PositiveIntegerField(default=60, help_text="The metric is averaged over this window.")
    label_selector = models.JSONField(
        default=dict, blank=True, help_text="Devices whose labels include all these key=value pairs."
    )
    enabled = models.BooleanField(default=True)
    webhook_url = models.URLField(blank=True, max_length=500)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name}: {self.metric} {self.get_comparison_display()} {self.threshold:g}"

    @property
    def effective_clear_threshold(self) -> float:
        return self.threshold if self.clear_threshold is None else self.clear_threshold

    def clean(self) -> None:
        clear = self.clear_threshold
        if clear is not None:
            above = self.comparison in (Comparison.GT, Comparison.GTE)
            if (above and clear > self.threshold) or (not above and clear < self.threshold):
                raise ValidationError({"clear_threshold": (
                    "must be on the healthy side of the threshold "
                    f"({'<=' if above else '>='} {self.threshold:g}), or the alert would flap"
                )})
        if not isinstance(self.label_selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.label_selector.items()
        ):
            raise ValidationError({"label_selector": "must be an object of string key=value pairs"})

    def snapshot(self) -> dict:
        return {
            "name": self.name, "metric": self.metric, "comparison": self.comparison,
            "threshold": self.threshold, "clear_threshold": self.clear_threshold, "for_s": self.for_s,
            "window_s": self.window_s, "label_selector": dict(self.label_selector),
            "enabled": self.enabled, "webhook_url": self.webhook_url,
        }


class AlertKind(models.TextChoices):
    METRIC = "metric", "Metric rule"
    OFFLINE = "offline", "Device offline"


class AlertState(models.TextChoices):
    PENDING = "pending", "Pending"  # the condition holds, not yet for the rule's `for_s`
    FIRING = "firing", "Firing"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    """One occurrence of a rule's condition (or of the built-in offline alert) on one device."""

    kind = models.CharField(max_length=8, choices=AlertKind.choices, default=AlertKind.METRIC)
    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="alerts")
    state = models.CharField(max_length=8, choices=AlertState.choices, db_index=True)
    started_at = models.DateTimeField(help_text="When the condition was first seen.")
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True, help_text="The value that fired the alert.")
    last_value = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # At most one open alert per rule and device, and one open offline alert per device.
            models.UniqueConstraint(fields=["rule", "device"], condition=Q(state__in=["pending", "firing"]),
                                    name="fleet_alert_one_open_per_rule_device"),
            models.UniqueConstraint(fields=["device"], condition=Q(kind="offline", state__in=["pending", "firing"]),
                                    name="fleet_alert_one_open_offline_per_device"),
        ]
        indexes = [models.Index(fields=["device", "-started_at"], name="fleet_alert_device_started")]

    def __str__(self) -> str:
        what = self.rule.name if self.rule_id else "offline"
        return f"{what} on {self.device_id}: {self.state}"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class WebhookDelivery(models.Model):
    """One notification of an alert's firing or resolution, POSTed as JSON to the rule's URL."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=500)
    event = models.CharField(max_length=16)
    payload = models.JSONField()
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event} of alert {self.alert_id} to {self.url}: {self.state}"
