"""Serializers of the compression API: read shapes for models, versions, datasets, jobs and
variants, and the request bodies of uploads and job creation."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from compression.models import (
    AIModel,
    CompressionJob,
    Dataset,
    JobStatus,
    ModelVersion,
    Variant,
    VariantStatus,
)


def _username(user) -> str | None:
    return user.get_username() if user is not None else None


class VariantSerializer(serializers.ModelSerializer):
    """Every measurement of a variant, whether it can be deployed, and where to download it."""

    model = serializers.CharField(source="source.model.name", read_only=True)
    version = serializers.IntegerField(source="source.version", read_only=True)
    deployable = serializers.BooleanField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Variant
        fields = [
            "id", "model", "source", "version", "job", "recipe", "params", "status", "reason",
            "deployable", "sha256", "size_bytes", "gzip_bytes", "signature", "latency_ms",
            "baseline_latency_ms", "fidelity", "peak_memory_bytes", "execution_providers",
            "pareto", "recommended", "lineage", "download_url", "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_download_url(self, obj: Variant) -> str | None:
        if not obj.file:
            return None
        return reverse("variant-download", args=[obj.pk])


class VariantSummarySerializer(serializers.ModelSerializer):
    deployable = serializers.BooleanField(read_only=True)

    class Meta:
        model = Variant
        fields = ["id", "recipe", "status", "reason", "deployable", "sha256", "size_bytes",
                  "latency_ms"]
        read_only_fields = fields


class ModelVersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)
    created_by = serializers.SerializerMethodField()
    original_variant = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["id", "model", "version", "sha256", "size_bytes", "original_filename",
                  "metadata", "notes", "created_by", "created_at", "original_variant"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_created_by(self, obj) -> str | None:
        return _username(obj.created_by)

    @extend_schema_field(VariantSummarySerializer(allow_null=True))
    def get_original_variant(self, obj: ModelVersion):
        originals = [v for v in obj.variants.all() if v.recipe == "original"]
        return VariantSummarySerializer(originals[0]).data if originals else None


class ModelVersionBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "version", "sha256", "size_bytes", "created_at"]
        read_only_fields = fields


class AIModelSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    versions = ModelVersionBriefSerializer(many=True, read_only=True)

    class Meta:
        model = AIModel
        fields = ["id", "name", "description", "created_by", "created_at", "versions"]
        read_only_fields = ["id", "created_by", "created_at", "versions"]

    @extend_schema_field(OpenApiTypes.STR)
    def get_created_by(self, obj) -> str | None:
        return _username(obj.created_by)


class AIModelCreateSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100, help_text="letters, digits, - and _")
    description = serializers.CharField(required=False, allow_blank=True, default="")


class VersionUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=".onnx, or .zip holding one .onnx and its external data")
    notes = serializers.CharField(required=False, allow_blank=True, default="")


class DatasetSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name", read_only=True)

    class Meta:
        model = Dataset
        fields = ["id", "model", "name", "sha256", "size_bytes", "samples", "has_labels",
                  "metadata", "created_at"]
        read_only_fields = fields


class DatasetUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text=".npz: one array per model input, optional 'labels'")
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)
    version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True, default=None,
        help_text="validate against this version's inputs (default: the latest version)",
    )


class JobSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="version.model.name", read_only=True)
    version_number = serializers.IntegerField(source="version.version", read_only=True)

    class Meta:
        model = CompressionJob
        fields = ["id", "model", "version", "version_number", "dataset", "recipe", "status",
                  "progress", "step", "error", "recommended", "attempts", "cancel_requested",
                  "created_at", "started_at", "finished_at"]
        read_only_fields = fields


class JobDetailSerializer(JobSerializer):
    variants = VariantSerializer(many=True, read_only=True)

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "params", "constraints", "input_shapes", "options",
                  "log", "report", "variants"]
        read_only_fields = fields


class JobCreateSerializer(serializers.Serializer):
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.select_related("model"))
    recipe = serializers.CharField(
        max_length=100, help_text="a recipe, a chain like prune-magnitude+int8-dynamic, or auto"
    )
    params = serializers.DictField(required=False, default=dict)
    dataset = serializers.PrimaryKeyRelatedField(
        queryset=Dataset.objects.all(), required=False, allow_null=True, default=None
    )
    constraints = serializers.DictField(
        required=False, default=dict,
        help_text="cosine_min, top1_min, accuracy_drop_max, latency_slack, max_size_bytes, "
        "max_latency_ms",
    )
    input_shapes = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField(min_value=1), min_length=0),
        required=False, default=dict, help_text='concrete dims per input, e.g. {"x": [1, 64]}',
    )
    options = serializers.DictField(
        required=False, default=dict,
        help_text="engine settings: threads, latency_runs, calibration_samples, …",
    )


class RecipeSerializer(serializers.Serializer):
    name = serializers.CharField()
    summary = serializers.CharField()
    auto = serializers.BooleanField()


class SigningKeySerializer(serializers.Serializer):
    algorithm = serializers.CharField()
    scheme = serializers.CharField()
    signed_message = serializers.CharField()
    signature_encoding = serializers.CharField()
    key_id = serializers.CharField()
    public_key_pem = serializers.CharField()
    public_key_raw_b64 = serializers.CharField()


JOB_STATUSES = JobStatus.choices
VARIANT_STATUSES = VariantStatus.choices
