"""The compression API v1: thin viewsets over ``compression.services``.

Viewers read everything; operators upload models and datasets, start and cancel jobs and
download artifacts. Errors are ``{"detail": ...}`` like the rest of the API.
"""

from __future__ import annotations

from django.db.models import Prefetch
from django.http import FileResponse, Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from compression import services, signing, storage
from compression.engine import list_recipes
from compression.filters import JobFilter, VariantFilter
from compression.models import AIModel, CompressionJob, Dataset, ModelVersion, Variant
from fleet.audit import client_ip
from fleet.roles import OPERATOR

from . import serializers as s

UPLOAD_OVERHEAD = 1024 * 1024
"""Multipart framing and form fields around the file, allowed on top of the file limit."""


def _error(exc: services.RegistryError) -> Response:
    return Response({"detail": str(exc), **exc.extra}, status=exc.status)


def _too_large(request) -> Response | None:
    """Refuse an oversized upload from its Content-Length, before reading the body."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > services.upload_limit() + UPLOAD_OVERHEAD:
        return Response(
            {"detail": f"upload too large: {services.too_large_message(length)}"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return None


ERRORS = {
    400: OpenApiResponse(description="Invalid file or request; `detail` says why"),
    409: OpenApiResponse(description="Conflict"),
    413: OpenApiResponse(description="Upload larger than EDGEFLEET_MAX_MODEL_UPLOAD_BYTES"),
}


class AIModelViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Models (by id or by name), their uploaded versions and their datasets."""

    queryset = AIModel.objects.select_related("created_by").prefetch_related(
        Prefetch("versions", queryset=ModelVersion.objects.order_by("-version"))
    )
    serializer_class = s.AIModelSerializer
    lookup_value_regex = "[^/]+"
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at"]
    filterset_fields: list[str] = []

    def get_object(self):
        ref = self.kwargs["pk"]
        lookup = {"pk": int(ref)} if ref.isdigit() else {"name": ref}
        obj = self.get_queryset().filter(**lookup).first()
        if obj is None:
            raise Http404(f"no model {ref!r}")
        self.check_object_permissions(self.request, obj)
        return obj

    @extend_schema(request=s.AIModelCreateSerializer, responses={201: s.AIModelSerializer, **ERRORS},
                   summary="Register a model name")
    def create(self, request, *args, **kwargs):
        ser = s.AIModelCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            model = services.create_model(request.user, ip=client_ip(request), **ser.validated_data)
        except services.RegistryError as exc:
            return _error(exc)
        return Response(s.AIModelSerializer(model).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["get"], responses=s.ModelVersionSerializer(many=True),
                   summary="The model's versions, newest first")
    @extend_schema(
        methods=["post"],
        request={"multipart/form-data": s.VersionUploadSerializer},
        responses={201: s.ModelVersionSerializer, **ERRORS},
        summary="Upload a new version (.onnx, or .zip with external data)",
        description="Streamed to storage, checked with the full ONNX checker and an onnxruntime "
        "session, stored by sha256, and registered with a verified, signed `original` variant.",
    )
    @action(detail=True, methods=["get", "post"],
            parser_classes=[MultiPartParser, FormParser])
    def versions(self, request, pk=None):
        model = self.get_object()
        if request.method == "GET":
            versions = model.versions.select_related("model", "created_by").prefetch_related(
                "variants").order_by("-version")
            return Response(s.ModelVersionSerializer(versions, many=True).data)
        if (refused := _too_large(request)) is not None:
            return refused
        ser = s.VersionUploadSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        upload = ser.validated_data["file"]
        try:
            version = services.add_version(
                request.user, model, upload, filename=upload.name,
                notes=ser.validated_data["notes"], ip=client_ip(request),
            )
        except services.RegistryError as exc:
            return _error(exc)
        version = ModelVersion.objects.select_related("model", "created_by").prefetch_related(
            "variants").get(pk=version.pk)
        return Response(s.ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["get"], responses=s.DatasetSerializer(many=True),
                   summary="The model's datasets")
    @extend_schema(
        methods=["post"],
        request={"multipart/form-data": s.DatasetUploadSerializer},
        responses={201: s.DatasetSerializer, **ERRORS},
        summary="Upload a dataset (.npz), validated against the model's inputs",
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[MultiPartParser, FormParser])
    def datasets(self, request, pk=None):
        model = self.get_object()
        if request.method == "GET":
            return Response(s.DatasetSerializer(model.datasets.select_related("model"), many=True).data)
        if (refused := _too_large(request)) is not None:
            return refused
        ser = s.DatasetUploadSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        try:
            dataset = services.add_dataset(
                request.user, model, data["file"], filename=data["file"].name, name=data["name"],
                version=data["version"], ip=client_ip(request),
            )
        except services.RegistryError as exc:
            return _error(exc)
        return Response(s.DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Uploaded versions with their metadata (opset, inputs and outputs, op histogram, …)."""

    queryset = ModelVersion.objects.select_related("model", "created_by").prefetch_related("variants")
    serializer_class = s.ModelVersionSerializer
    filterset_fields = ["model", "sha256"]


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Dataset.objects.select_related("model")
    serializer_class = s.DatasetSerializer
    filterset_fields = ["model", "sha256", "has_labels"]


class CompressionJobViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Compression jobs: start one, follow its progress and log, read its variants, cancel it."""

    queryset = CompressionJob.objects.select_related("version__model")
    filterset_class = JobFilter
    ordering_fields = ["created_at", "status", "finished_at"]
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(
                Prefetch("variants", queryset=Variant.objects.select_related("source__model"))
            )
        return queryset

    def get_serializer_class(self):
        if self.action == "retrieve":
            return s.JobDetailSerializer
        if self.action == "create":
            return s.JobCreateSerializer
        return s.JobSerializer

    @extend_schema(request=s.JobCreateSerializer, responses={201: s.JobDetailSerializer, **ERRORS},
                   summary="Start a compression job (queued on the compress queue)")
    def create(self, request, *args, **kwargs):
        ser = s.JobCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            job = services.create_job(request.user, ip=client_ip(request), **ser.validated_data)
        except services.RegistryError as exc:
            return _error(exc)
        job = self.get_queryset().prefetch_related("variants").get(pk=job.pk)
        return Response(s.JobDetailSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.JobSerializer, 409: ERRORS[409]},
                   summary="Cancel a queued or running job")
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        try:
            job = services.cancel_job(request.user, self.get_object(), ip=client_ip(request))
        except services.RegistryError as exc:
            return _error(exc)
        return Response(s.JobSerializer(job).data)


class VariantViewSet(viewsets.ReadOnlyModelViewSet):
    """Variants with every measurement; ``?deployable=true`` lists what can be rolled out."""

    queryset = Variant.objects.select_related("source__model")
    serializer_class = s.VariantSerializer
    filterset_class = VariantFilter
    ordering_fields = ["size_bytes", "created_at"]
    required_roles = {"download": OPERATOR}

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiResponse(
        description="The artifact; headers X-EdgeFleet-SHA256 and X-EdgeFleet-Signature"),
        404: OpenApiResponse(description="No stored artifact")},
        summary="Download a variant's ONNX file (operators)")
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        variant = self.get_object()
        if not variant.file:
            raise Http404(f"variant has no stored artifact ({variant.status}: {variant.reason})")
        path = storage.path_of(variant.file)
        if not path.is_file():
            raise Http404("the artifact file is missing from storage")
        name = f"{variant.source.model.name}-v{variant.source.version}-{variant.recipe}-{variant.sha256[:12]}.onnx"
        response = FileResponse(open(path, "rb"), as_attachment=True,  # noqa: SIM115 - FileResponse closes it
                                filename=name.replace("+", "_"),
                                content_type="application/octet-stream")
        response["X-EdgeFleet-SHA256"] = variant.sha256
        response["X-EdgeFleet-Signature"] = variant.signature
        return response


class RecipesView(APIView):
    """The engine's recipes with a one-line explanation each (``auto`` tries them all)."""

    @extend_schema(responses=s.RecipeSerializer(many=True), summary="Available recipes")
    def get(self, request):
        return Response([*list_recipes(), {"name": "auto", "auto": False,
                         "summary": "Try the applicable recipes, verify each, recommend the best."}])


class SigningKeyView(APIView):
    """The public half of the server's artifact-signing key. Public by nature: no credentials
    needed, so an agent can pin it before it enrolls."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=s.SigningKeySerializer, tags=["agent"],
                   summary="The server's Ed25519 public key for artifact signatures")
    def get(self, request):
        return Response(signing.published())
