"""Deployments: which model variant each device should run, and how the rollout got there.

A :class:`Deployment` targets devices (all, a label selector, or a list) with a model (a pinned
version or the latest one), a variant policy and a phased rollout. Each targeted device gets a
:class:`DeviceAssignment` that records the variant chosen for it and why, what it ran before (for
rollback) and how far the device got. At most one assignment per (device, model) is ``current``:
the current assignments of a device *are* its desired state. :class:`DesiredStateVersion` counts
changes to them, which makes the agents' ETag a single primary-key lookup.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


class DeploymentState(models.TextChoices):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class TargetKind(models.TextChoices):
    ALL = "all", "All active devices"
    LABELS = "labels", "Devices whose labels match every key=value of the selector"
    DEVICES = "devices", "An explicit list of devices"


class VariantPolicy(models.TextChoices):
    AUTO = "auto", "Best fitting variant per device"
    PINNED = "pinned", "One chosen variant for every device"


DEFAULT_PHASES = [1, "10%", "50%", "100%"]


def default_phases() -> list:
    return list(DEFAULT_PHASES)


def no_failures() -> int:
    """The default error threshold: pause at the first failure."""
    return 0


def parse_amount(value, *, allow_zero: bool = False) -> tuple[str, float]:
    """``3`` → ("count", 3); ``"10%"`` → ("percent", 10). Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a count or a percentage like '10%'")
    if isinstance(value, int):
        if value < (0 if allow_zero else 1):
            raise ValueError(f"count must be at least {0 if allow_zero else 1}")
        return "count", float(value)
    text = str(value).strip()
    if text.endswith("%"):
        pct = float(text[:-1])
        if not (0 <= pct <= 100) or (pct == 0 and not allow_zero):
            raise ValueError("a percentage must be within (0, 100]")
        return "percent", pct
    if text.isdigit():
        return parse_amount(int(text), allow_zero=allow_zero)
    raise ValueError(f"{value!r} is neither a count nor a percentage like '10%'")


class Deployment(models.Model):
    """An operator's request to run a model on a set of devices, rolled out in phases."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, blank=True)
    model = models.ForeignKey("compression.AIModel", on_delete=models.PROTECT, related_name="deployments")
    version = models.ForeignKey(
        "compression.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="Pinned version; empty means the latest version when the deployment starts.",
    )
    resolved_version = models.ForeignKey(
        "compression.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
        related_name="deployments", help_text="The version actually deployed (set at start).",
    )
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices, default=TargetKind.LABELS)
    target_labels = models.JSONField(default=dict, blank=True, help_text="key=value selector")
    target_devices = models.ManyToManyField("fleet.Device", blank=True, related_name="+")
    variant_policy = models.CharField(max_length=10, choices=VariantPolicy.choices, default=VariantPolicy.AUTO)
    pinned_variant = models.ForeignKey(
        "compression.Variant", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    phases = models.JSONField(default=default_phases, help_text='e.g. [1, "10%", "50%", "100%"]')
    success_share = models.FloatField(
        default=1.0, help_text="Share (0-1] of a phase's devices installed and healthy to pass the gate."
    )
    soak_seconds = models.PositiveIntegerField(default=300, help_text="Time the gate must hold.")
    error_threshold = models.JSONField(
        default=no_failures, help_text="Failures tolerated before auto-pause: a count (0 = none) or '10%'."
    )
    state = models.CharField(max_length=12, choices=DeploymentState.choices, default=DeploymentState.DRAFT,
                             db_index=True)
    current_phase = models.PositiveIntegerField(default=0)
    phase_started_at = models.DateTimeField(null=True, blank=True)
    gate_met_at = models.DateTimeField(null=True, blank=True)
    failures_acknowledged = models.PositiveIntegerField(
        default=0, help_text="Failures an operator accepted by resuming; not counted again."
    )
    state_reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or f"{self.model.name} deployment {str(self.id)[:8]}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.phases, list) or not self.phases:
            errors["phases"] = "a non-empty list of counts or percentages"
        else:
            try:
                for phase in self.phases:
                    parse_amount(phase)
            except ValueError as exc:
                errors["phases"] = str(exc)
        try:
            parse_amount(self.error_threshold, allow_zero=True)
        except ValueError as exc:
            errors["error_threshold"] = str(exc)
        if not 0 < self.success_share <= 1:
            errors["success_share"] = "must be within (0, 1]"
        if self.variant_policy == VariantPolicy.PINNED and not self.pinned_variant_id:
            errors["pinned_variant"] = "a pinned policy needs a variant"
        if self.pinned_variant_id and self.variant_policy != VariantPolicy.PINNED:
            errors["pinned_variant"] = "only with the pinned policy"
        if self.version_id and self.version.model_id != self.model_id:
            errors["version"] = "this version belongs to another model"
        if self.pinned_variant_id:
            version_id = self.version_id
            if version_id and self.pinned_variant.source_id != version_id:
                errors["pinned_variant"] = "this variant belongs to another version"
            elif self.pinned_variant.source.model_id != self.model_id:
                errors["pinned_variant"] = "this variant belongs to another model"
        if self.target_kind == TargetKind.LABELS and not (
            isinstance(self.target_labels, dict) and self.target_labels
        ):
            errors["target_labels"] = "a label selector needs at least one key=value"
        if errors:
            raise ValidationError(errors)

    @property
    def is_live(self) -> bool:
        return self.state in (DeploymentState.ACTIVE, DeploymentState.PAUSED)

    def snapshot(self) -> dict:
        """What the audit log keeps of the deployment before and after a change."""
        snap = {
            "name": self.name, "state": self.state, "current_phase": self.current_phase, "model": self.model_id,
            "version": str(self.resolved_version_id or self.version_id or ""),
            "target_kind": self.target_kind, "target_labels": self.target_labels,
            "variant_policy": self.variant_policy,
            "pinned_variant": str(self.pinned_variant_id) if self.pinned_variant_id else None,
            "phases": self.phases, "success_share": self.success_share, "soak_seconds": self.soak_seconds,
            "error_threshold": self.error_threshold, "reason": self.state_reason,
        }
        if self.target_kind == TargetKind.DEVICES and self.pk is not None:
            snap["target_devices"] = self.target_devices.count()
        return snap


class AssignmentState(models.TextChoices):
    PENDING = "pending", "Waiting for its phase"
    ASSIGNED = "assigned", "In the device's desired state"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    CHECKING = "checking", "Health check and benchmark on the device"
    INSTALLED = "installed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back", "Asked to go back to the previous variant"
    ROLLED_BACK = "rolled_back"
    INCOMPATIBLE = "incompatible", "No variant fits this device"
    SUPERSEDED = "superseded", "A newer deployment of the model took over"
    CANCELLED = "cancelled", "The deployment stopped before this device's phase"


IN_PROGRESS = (AssignmentState.ASSIGNED, AssignmentState.DOWNLOADING, AssignmentState.VERIFYING,
               AssignmentState.CHECKING)


class DeviceAssignment(models.Model):
    """One device in one deployment: the variant chosen for it, why, and its progress."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="assignments")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="assignments")
    model = models.ForeignKey("compression.AIModel", on_delete=models.CASCADE, related_name="+")
    phase = models.PositiveIntegerField(default=0)
    order = models.PositiveIntegerField(default=0, help_text="Position in the rollout order.")
    variant = models.ForeignKey("compression.Variant", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="assignments")
    reason = models.TextField(blank=True, help_text="Why this variant, in words.")
    reason_detail = models.JSONField(default=dict, blank=True, help_text="Why, as data.")
    previous_variant = models.ForeignKey(
        "compression.Variant", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="What the device ran before; the rollback target (empty: nothing).",
    )
    state = models.CharField(max_length=14, choices=AssignmentState.choices, default=AssignmentState.PENDING,
                             db_index=True)
    current = models.BooleanField(default=False, help_text="Part of the device's desired state.")
    progress = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    benchmark_p50_ms = models.FloatField(null=True, blank=True)
    benchmark_p95_ms = models.FloatField(null=True, blank=True)
    peak_rss_bytes = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    assigned_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "order"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "device"], name="fleet_assignment_unique_device"),
            # Each device runs at most one variant per model.
            models.UniqueConstraint(fields=["device", "model"], condition=Q(current=True),
                                    name="fleet_assignment_one_current_per_model"),
        ]
        indexes = [models.Index(fields=["deployment", "state"]), models.Index(fields=["device", "current"])]

    def __str__(self) -> str:
        return f"{self.device_id} in {self.deployment_id}: {self.state}"

    @property
    def target_variant_id(self):
        """The variant the device should run now: the previous one after a failure (the device
        kept it) and while rolling back."""
        if self.state in (AssignmentState.FAILED, AssignmentState.ROLLING_BACK, AssignmentState.ROLLED_BACK):
            return self.previous_variant_id
        return self.variant_id


class DeploymentReport(models.Model):
    """One progress report from a device, kept as the device's deployment history."""

    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="deployment_reports")
    assignment = models.ForeignKey(DeviceAssignment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="reports")
    report_id = models.CharField(max_length=64, help_text="Chosen by the agent; a replay is stored once.")
    model_name = models.CharField(max_length=100, blank=True)
    variant_id = models.UUIDField(null=True, blank=True)
    state = models.CharField(max_length=14)
    progress = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    benchmark = models.JSONField(default=dict, blank=True)
    accepted = models.BooleanField(default=True, help_text="False when it matched no current assignment.")
    reported_at = models.DateTimeField(null=True, blank=True, help_text="The device's clock.")
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["device", "report_id"], name="fleet_report_unique_id"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.state} on {self.device_id}"


class VariantBenchmark(models.Model):
    """The latest on-device benchmark of a variant on one device; grouped by device class
    (cpu_model + arch) they feed the ``auto`` policy."""

    variant = models.ForeignKey("compression.Variant", on_delete=models.CASCADE, related_name="device_benchmarks")
    device = models.ForeignKey("fleet.Device", on_delete=models.CASCADE, related_name="+")
    cpu_model = models.CharField(max_length=255, blank=True)
    arch = models.CharField(max_length=32, blank=True)
    p50_ms = models.FloatField()
    p95_ms = models.FloatField(null=True, blank=True)
    peak_rss_bytes = models.BigIntegerField(null=True, blank=True)
    measured_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["variant", "device"], name="fleet_variant_benchmark_unique"),
        ]
        # fleet.placement_data.class_latencies: the latest measurements of a variant on a class.
        indexes = [models.Index(fields=["variant", "cpu_model", "arch", "-measured_at"],
                                name="fleet_vbench_class_recent")]

    def __str__(self) -> str:
        return f"{self.variant_id} on {self.device_id}: {self.p50_ms} ms"


class HealthCheck(models.Model):
    """A few inputs of a model version and the original's outputs on them (onnxruntime, at
    deploy time), as base64 .npz. Agents compare a new variant's outputs with these."""

    version = models.OneToOneField("compression.ModelVersion", on_delete=models.CASCADE,
                                   primary_key=True, related_name="health_check")
    inputs_npz = models.TextField(blank=True)
    outputs_npz = models.TextField(blank=True)
    samples = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, help_text="Why no check could be built, if so.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"health check of {self.version_id} ({self.samples} samples)"


class DesiredStateVersion(models.Model):
    """A counter per device, bumped whenever its desired state changes: the agents' ETag."""

    device = models.OneToOneField("fleet.Device", on_delete=models.CASCADE, primary_key=True,
                                  related_name="desired_state_version")
    generation = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.device_id} @ {self.generation}"
