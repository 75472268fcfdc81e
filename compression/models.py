"""Model registry and compression jobs.

Files are content-addressed: an uploaded model, a dataset and every variant live under
ARTIFACT_ROOT at ``<kind>/<sha256[:2]>/<sha256><ext>``, written to a temporary name and moved into
place, so a crash never leaves half a file under a final name.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class AIModel(models.Model):
    """A model an operator manages, e.g. "defect-detector"; its files are its versions."""

    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    """One uploaded ONNX file of a model, validated (checker + onnxruntime session) on upload."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    file = models.CharField(max_length=500, help_text="Path relative to ARTIFACT_ROOT.")
    original_filename = models.CharField(max_length=255, blank=True)
    metadata = models.JSONField(default=dict, blank=True, help_text="opset, inputs, outputs, ops, params…")
    notes = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [models.UniqueConstraint(fields=["model", "version"], name="compression_unique_model_version")]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class Dataset(models.Model):
    """An .npz file with one array per model input (leading sample axis) and optional labels."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=100)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    file = models.CharField(max_length=500)
    samples = models.PositiveIntegerField()
    has_labels = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True, help_text="arrays, shapes, dtypes")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.samples} samples)"


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CompressionJob(models.Model):
    """A request to compress one model version with a recipe (or ``auto``). Its state lives
    here, not in the broker, so the dashboard can show it without asking Celery."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="jobs")
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    recipe = models.CharField(max_length=100)
    params = models.JSONField(default=dict, blank=True)
    constraints = models.JSONField(default=dict, blank=True, help_text="min cosine, top-1, max size/latency")
    input_shapes = models.JSONField(default=dict, blank=True, help_text="dims for symbolic inputs")
    options = models.JSONField(
        default=dict, blank=True, help_text="engine settings: threads, latency_runs, sample counts…"
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0, help_text="0 to 100")
    step = models.CharField(max_length=200, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    report = models.JSONField(null=True, blank=True, help_text="the engine's JSON document")
    recommended = models.ForeignKey("Variant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.recipe} on {self.version}"

    @property
    def is_active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)


class VariantStatus(models.TextChoices):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"


class VariantQuerySet(models.QuerySet):
    def deployable(self) -> VariantQuerySet:
        """Accepted variants with a stored, signed artifact: the only ones deployments may use."""
        return (
            self.filter(status=VariantStatus.ACCEPTED)
            .exclude(sha256="")
            .exclude(signature="")
            .exclude(file="")
        )


class Variant(models.Model):
    """A verified (or refused) compressed file of a model version. Only ``accepted`` variants
    with a signed artifact are deployable; the rest stay visible with their reason."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(CompressionJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="variants")
    source = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="variants")
    recipe = models.CharField(max_length=100, help_text="'original' for the uploaded file itself")
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=VariantStatus.choices, db_index=True)
    reason = models.TextField(blank=True)
    sha256 = models.CharField(max_length=64, blank=True, db_index=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    gzip_bytes = models.BigIntegerField(null=True, blank=True)
    file = models.CharField(max_length=500, blank=True)
    signature = models.CharField(max_length=200, blank=True, help_text="Ed25519 over the sha256, base64")
    latency_ms = models.JSONField(default=dict, blank=True, help_text="p50/p90/p99 on the worker")
    baseline_latency_ms = models.JSONField(default=dict, blank=True)
    fidelity = models.JSONField(default=dict, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True, help_text="estimated, for placement")
    execution_providers = models.JSONField(default=list, blank=True, help_text="providers it needs")
    pareto = models.BooleanField(default=False)
    recommended = models.BooleanField(default=False)
    lineage = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = VariantQuerySet.as_manager()

    class Meta:
        ordering = ["size_bytes"]
        constraints = [
            # The uploaded file itself is one variant per version, however often it is verified.
            models.UniqueConstraint(
                fields=["source"],
                condition=models.Q(recipe="original"),
                name="compression_one_original_per_version",
            )
        ]

    def __str__(self) -> str:
        return f"{self.source} · {self.recipe} ({self.status})"

    @property
    def deployable(self) -> bool:
        return self.status == VariantStatus.ACCEPTED and bool(self.sha256 and self.signature and self.file)
