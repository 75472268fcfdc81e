from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.secrets import DEVICE_PREFIX, display_prefix, hash_token, new_token


class DeviceStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    ACTIVE = "active", "Active"
    DISABLED = "disabled", "Disabled"
    REJECTED = "rejected", "Rejected"
    DECOMMISSIONED = "decommissioned", "Decommissioned"


class Device(models.Model):
    """An edge device running the agent, or pre-provisioned by an operator awaiting its agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.PENDING, db_index=True
    )
    fingerprint = models.CharField(
        max_length=200, blank=True, help_text="Stable hardware identity reported by the agent."
    )
    labels = models.JSONField(default=dict, blank=True, help_text="key=value pairs.")

    # Inventory, as reported by the agent (the full document is kept in `inventory`).
    inventory = models.JSONField(default=dict, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    os = models.CharField(max_length=100, blank=True)
    arch = models.CharField(max_length=32, blank=True)
    cpu_model = models.CharField(max_length=255, blank=True)
    cpu_cores = models.PositiveIntegerField(null=True, blank=True)
    memory_total_bytes = models.BigIntegerField(null=True, blank=True)
    disk_total_bytes = models.BigIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=50, blank=True)
    onnxruntime_version = models.CharField(max_length=50, blank=True)
    execution_providers = models.JSONField(default=list, blank=True)

    enrolled_with = models.ForeignKey(
        "fleet.EnrollmentToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )
    enrolled_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            # One live device per hardware identity: a replayed enrollment finds the same row.
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=~Q(fingerprint="") & ~Q(status="decommissioned"),
                name="fleet_device_unique_live_fingerprint",
            ),
        ]
        indexes = [models.Index(fields=["status", "name"])]

    def __str__(self) -> str:
        return self.name

    @property
    def labels_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    def snapshot(self) -> dict:
        """The fields the audit log records before and after a change."""
        return {"name": self.name, "status": self.status, "labels": dict(self.labels)}

    def issue_credential(self) -> str:
        """Revoke any live credential and return a new plain device token (shown once)."""
        now = timezone.now()
        self.credentials.filter(revoked_at__isnull=True).update(revoked_at=now)
        token = new_token(DEVICE_PREFIX)
        DeviceCredential.objects.create(
            device=self, token_hash=hash_token(token), prefix=display_prefix(token)
        )
        return token


class DeviceCredential(models.Model):
    """A device's API token, stored as a SHA-256 digest. Rotating revokes the previous one."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.device_id})"

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None
