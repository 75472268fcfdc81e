"""Operators' API for deployments: CRUD of drafts, preview, start/pause/resume/abort/rollback,
the per-deployment device list and the per-device deployment history. Thin over fleet.rollouts."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import ListAPIView
from rest_framework.response import Response

from compression.models import AIModel, ModelVersion, Variant
from fleet import rollouts
from fleet.audit import client_ip
from fleet.models import Deployment, DeploymentReport, DeploymentState, Device, DeviceAssignment
from fleet.models.deployments import TargetKind, VariantPolicy, default_phases


def _body(request) -> dict:
    """The request body when it is a JSON object, else {} (these actions take optional flags)."""
    if not isinstance(request.data, dict):
        raise serializers.ValidationError("the body must be a JSON object (or empty)")
    return request.data

class DeploymentSerializer(serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=AIModel.objects.all())
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all(), required=False,
                                                 allow_null=True)
    pinned_variant = serializers.PrimaryKeyRelatedField(queryset=Variant.objects.all(), required=False,
                                                        allow_null=True)
    target_devices = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all(), many=True, required=False)
    phases = serializers.JSONField(default=default_phases)
    error_threshold = serializers.JSONField(default=0)
    counts = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = ["id", "name", "model", "version", "resolved_version", "target_kind", "target_labels",
                  "target_devices", "variant_policy", "pinned_variant", "phases", "success_share",
                  "soak_seconds", "error_threshold", "state", "state_reason", "current_phase",
                  "phase_started_at", "gate_met_at", "counts", "created_by", "created_at", "updated_at",
                  "started_at", "finished_at"]
        read_only_fields = ["resolved_version", "state", "state_reason", "current_phase", "phase_started_at",
                            "gate_met_at", "created_by", "created_at", "updated_at", "started_at", "finished_at"]

    def get_counts(self, obj) -> dict:
        counts = getattr(obj, "_counts", None)
        return counts if counts is not None else {}

    def validate(self, attrs):
        instance = Deployment(**{k: v for k, v in attrs.items() if k != "target_devices"})
        if self.instance is not None:
            for field in Deployment._meta.concrete_fields:
                if field.name not in attrs and not field.primary_key:
                    setattr(instance, field.attname, getattr(self.instance, field.attname))
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        if instance.target_kind == TargetKind.DEVICES and not attrs.get("target_devices") and (
            self.instance is None or not self.instance.target_devices.exists()
        ):
            raise serializers.ValidationError({"target_devices": "an explicit target needs devices"})
        return attrs


class AssignmentSerializer(serializers.ModelSerializer):
    device_name = serializers.CharField(source="device.name", read_only=True)
    deployment_name = serializers.CharField(source="deployment.__str__", read_only=True)
    model = serializers.CharField(source="model.name", read_only=True)

    class Meta:
        model = DeviceAssignment
        fields = ["id", "deployment", "deployment_name", "device", "device_name", "model", "phase", "order",
                  "variant", "reason", "reason_detail", "previous_variant", "state", "current", "progress",
                  "error", "benchmark_p50_ms", "benchmark_p95_ms", "peak_rss_bytes", "assigned_at",
                  "finished_at", "updated_at"]


class ReportSerializer(serializers.ModelSerializer):
    deployment = serializers.UUIDField(source="assignment.deployment_id", read_only=True, allow_null=True)

    class Meta:
        model = DeploymentReport
        fields = ["id", "report_id", "deployment", "assignment", "model_name", "variant_id", "state", "progress",
                  "error", "benchmark", "accepted", "reported_at", "received_at"]


class PreviewRequest(serializers.Serializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=AIModel.objects.all())
    version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all(), required=False, allow_null=True)
    target_kind = serializers.ChoiceField(choices=TargetKind.choices, default=TargetKind.ALL)
    target_labels = serializers.DictField(child=serializers.CharField(), required=False, default=dict)
    target_devices = serializers.PrimaryKeyRelatedField(queryset=Device.objects.all(), many=True, required=False)
    variant_policy = serializers.ChoiceField(choices=VariantPolicy.choices, default=VariantPolicy.AUTO)
    pinned_variant = serializers.PrimaryKeyRelatedField(queryset=Variant.objects.all(), required=False,
                                                        allow_null=True)
    phases = serializers.JSONField(default=default_phases)


PreviewResponse = inline_serializer("DeploymentPreview", {
    "version": serializers.DictField(allow_null=True),
    "phase_sizes": serializers.ListField(child=serializers.IntegerField()),
    "devices": inline_serializer("DeploymentPreviewDevice", {
        "device_id": serializers.UUIDField(), "device": serializers.CharField(),
        "phase": serializers.IntegerField(), "variant_id": serializers.UUIDField(allow_null=True),
        "reason": serializers.CharField(), "detail": serializers.DictField(),
    }, many=True),
})
AbortRequest = inline_serializer("DeploymentAbort", {"rollback": serializers.BooleanField(default=False)})
PauseRequest = inline_serializer("DeploymentPause", {"reason": serializers.CharField(required=False)})


class DeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
                        mixins.UpdateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Deployments of models to devices. Drafts can be edited and deleted; `start` begins the
    rollout. Viewers read; operators act. Every change is audited."""

    serializer_class = DeploymentSerializer
    filterset_fields = ["state", "model__name"]
    ordering_fields = ["created_at", "state"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return Deployment.objects.select_related("model").prefetch_related("target_devices")

    def _conflict(self, exc) -> Response:
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        devices = data.pop("target_devices", [])
        serializer.instance = rollouts.create(self.request.user, Deployment(**data), target_devices=devices,
                                              ip=client_ip(self.request))

    def retrieve(self, request, *args, **kwargs):
        obj = self.get_object()
        obj._counts = rollouts.stats(obj, released_only=False)["counts"]
        return Response(self.get_serializer(obj).data)

    def update(self, request, *args, **kwargs):
        obj = self.get_object()
        if obj.state != DeploymentState.DRAFT:  # before validation: the body does not matter then
            return self._conflict(f"only drafts can be edited; this deployment is {obj.state}")
        ser = self.get_serializer(obj, data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        changes = dict(ser.validated_data)
        devices = changes.pop("target_devices", None)
        try:
            obj = rollouts.update_draft(request.user, obj, changes, target_devices=devices, ip=client_ip(request))
        except rollouts.RolloutError as exc:  # started meanwhile
            return self._conflict(exc)
        return Response(self.get_serializer(obj).data)

    def destroy(self, request, *args, **kwargs):
        try:
            rollouts.delete_draft(request.user, self.get_object(), ip=client_ip(request))
        except rollouts.RolloutError as exc:
            return self._conflict(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _run(self, func, *args, **kwargs) -> Response:
        try:
            obj = func(self.request.user, self.get_object(), *args, ip=client_ip(self.request), **kwargs)
        except rollouts.RolloutError as exc:
            return self._conflict(exc)
        obj._counts = rollouts.stats(obj, released_only=False)["counts"]
        return Response(self.get_serializer(obj).data)

    @extend_schema(request=None, responses=DeploymentSerializer, summary="Start a draft deployment",
                   description="Active at once; the first phase is released when the version's health "
                               "check is built (a background task; `state_reason` starts with "
                               "\"preparing\" until then).")
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        # The health check (onnxruntime on the original model) is built by a Celery task; the
        # first phase is released when it is ready (state_reason says "preparing" until then).
        return self._run(rollouts.start, health_check="async")

    @extend_schema(request=PauseRequest, responses=DeploymentSerializer, summary="Pause the rollout")
    @action(detail=True, methods=["post"])
    def pause(self, request, pk=None):
        return self._run(rollouts.pause, reason=str(_body(request).get("reason", ""))[:200])

    @extend_schema(request=None, responses=DeploymentSerializer,
                   summary="Resume a paused rollout (failures so far count as accepted)")
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        return self._run(rollouts.resume)

    @extend_schema(request=AbortRequest, responses=DeploymentSerializer,
                   summary="Abort the rollout; with rollback=true every device goes back")
    @action(detail=True, methods=["post"])
    def abort(self, request, pk=None):
        rollback = _body(request).get("rollback") in (True, "true", "1", 1)
        return self._run(rollouts.abort, rollback=rollback)

    @extend_schema(request=None, responses=DeploymentSerializer,
                   summary="Put every device back on the variant it ran before this deployment")
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        return self._run(rollouts.roll_back)

    @extend_schema(request=None, responses=inline_serializer("RetryResult", {"released": serializers.IntegerField()}),
                   summary="Send the deployment again to the devices where it failed")
    @action(detail=True, methods=["post"], url_path="retry-failed")
    def retry_failed(self, request, pk=None):
        try:
            n = rollouts.retry_failed(request.user, self.get_object(), ip=client_ip(request))
        except rollouts.RolloutError as exc:
            return self._conflict(exc)
        return Response({"released": n})

    @extend_schema(responses=AssignmentSerializer(many=True), summary="Devices of the deployment")
    @action(detail=True, methods=["get"], filterset_fields=None, pagination_class=None)
    def devices(self, request, pk=None):
        obj = self.get_object()
        rows = obj.assignments.select_related("device", "model", "deployment__model")
        state = request.query_params.get("state")
        if state:
            rows = rows.filter(state=state)
        return Response(AssignmentSerializer(rows, many=True).data)

    @extend_schema(request=PreviewRequest, responses=PreviewResponse,
                   summary="Which devices a deployment would match, and which variant each would get, and why")
    @action(detail=False, methods=["post"])
    def preview(self, request):
        ser = PreviewRequest(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        device_ids = [d.pk for d in data.pop("target_devices", [])]
        draft = Deployment(**data)
        return Response(rollouts.preview(draft, device_ids))


class DeviceDeploymentsView(ListAPIView):
    """A device's deployments (its assignments, newest first) and its recent reports."""

    serializer_class = AssignmentSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return DeviceAssignment.objects.none()
        return (DeviceAssignment.objects.filter(device_id=self.kwargs["device_id"])
                .select_related("device", "model", "deployment__model").order_by("-created_at"))

    @extend_schema(summary="A device's deployment history")
    def get(self, request, *args, **kwargs):
        device = get_object_or_404(Device, pk=kwargs["device_id"])
        page = self.paginate_queryset(self.get_queryset())
        data = self.get_serializer(page, many=True).data
        reports = DeploymentReport.objects.filter(device=device).select_related("assignment")[:100]
        response = self.get_paginated_response(data)
        response.data["reports"] = ReportSerializer(reports, many=True).data
        return response
