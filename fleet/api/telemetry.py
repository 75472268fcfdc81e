"""Telemetry endpoints: the agent's report, and the operators' series, summary, rules and alerts.

The agent endpoint keeps DRF's permissions (active device) and its authentication rule, checked
by one raw query (``fleet.auth.LeanDeviceTokenAuthentication``), and reads and answers raw JSON: no parser, no
serializer per sample, no renderer (see ``fleet.telemetry.ingest`` for why and for the batch
semantics, docs/telemetry.md for the cost of a report).
"""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta

import django_filters
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet.audit import client_ip
from fleet.auth import LeanDeviceTokenAuthentication
from fleet.models import METRICS, Alert, AlertRule, Device, PresenceEvent
from fleet.schema import DEVICE_TOKEN_SCHEME
from fleet.telemetry import ingest, queries, rules
from fleet.timeutil import UTCDateTimeFilter, to_utc

from .agent import DeviceAPIView

# --- Agent: POST /api/v1/agent/telemetry ---------------------------------------------------------

_SampleDoc = inline_serializer("TelemetrySample", {
    "seq": serializers.IntegerField(min_value=1, help_text="Rises per device; replays are stored once."),
    "ts": serializers.CharField(help_text="Epoch seconds (number) or ISO 8601 with a timezone."),
    **{name: (serializers.IntegerField if kind == "int" else serializers.FloatField)(
        required=required, min_value=lo, max_value=hi)
       for name, (kind, lo, hi, required) in ingest.FIELDS.items()},
})
TelemetryRequest = inline_serializer("TelemetryRequest", {
    "samples": serializers.ListField(child=_SampleDoc),
    "dropped": serializers.IntegerField(min_value=0, required=False,
                                        help_text="Samples dropped since the last acknowledged report."),
    "interval_s": serializers.FloatField(required=False),
    "batch_size": serializers.IntegerField(required=False),
})
TelemetryResponse = inline_serializer("TelemetryResponse", {"acked_seq": serializers.IntegerField()})
TelemetryError = inline_serializer("TelemetryError", {
    "detail": serializers.CharField(),
    "code": serializers.CharField(),
    "errors": serializers.DictField(required=False, help_text='{"<sample index>": {"<field>": "<problem>"}}'),
})


def _bad(detail: str, code: int = 400) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": "invalid_telemetry"}, status=code)


class TelemetryView(DeviceAPIView):
    authentication_classes = [LeanDeviceTokenAuthentication]

    @extend_schema(
        request=TelemetryRequest,
        responses={
            200: TelemetryResponse,
            400: OpenApiResponse(TelemetryError, description="Invalid batch; nothing stored. Do not retry as is."),
            413: OpenApiResponse(TelemetryError, description="Too many samples or too many bytes"),
        },
        auth=DEVICE_TOKEN_SCHEME,
        summary="Report a batch of health samples",
        description="Stores the whole batch or nothing. `acked_seq` is the highest seq the server "
                    "holds for this device. Accepts `Content-Encoding: gzip`.",
        tags=["agent"],
    )
    def post(self, request):
        try:
            raw = request._request.body
        except RequestDataTooBig:
            return _bad("request body too large; send smaller batches", 413)
        if request.META.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            try:
                inflater = zlib.decompressobj(31)
                raw = inflater.decompress(raw, limit + 1)
            except zlib.error:
                return _bad("body is not valid gzip")
            if len(raw) > limit or inflater.unconsumed_tail:
                return _bad("request body too large once decompressed; send smaller batches", 413)
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return _bad(f"body is not valid JSON: {exc}")
        try:
            result = ingest.ingest(self.device, body)
        except ingest.BatchRejected as exc:
            return JsonResponse(exc.body(), status=exc.status)
        return JsonResponse({"acked_seq": result.acked_seq})


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


# --- Operators: series and summary ----------------------------------------------------------------


def _parse_time(value: str | None, name: str):
    if value in (None, ""):
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        try:
            parsed = datetime.fromtimestamp(float(value), tz=UTC)
        except (ValueError, OverflowError, OSError):
            raise serializers.ValidationError({name: "must be ISO 8601 or epoch seconds"}) from None
    try:
        return to_utc(parsed)
    except ValueError as exc:
        raise serializers.ValidationError({name: str(exc)}) from None


class DeviceTelemetryView(APIView):
    """A device's metrics over a time range, raw or rolled up."""

    @extend_schema(
        parameters=[
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="Default: one hour before until."),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="Default: now."),
            OpenApiParameter("resolution", OpenApiTypes.STR, enum=list(queries.RESOLUTIONS),
                             description="Default: raw up to 3 h, 1m up to 3 days, else 1h."),
            OpenApiParameter("metrics", OpenApiTypes.STR,
                             description=f"Comma-separated subset of {', '.join(METRICS)}."),
        ],
        responses={200: inline_serializer("TelemetrySeries", {
            "device_id": serializers.UUIDField(),
            "resolution": serializers.CharField(),
            "since": serializers.DateTimeField(),
            "until": serializers.DateTimeField(),
            "t": serializers.ListField(child=serializers.FloatField(), help_text="Epoch seconds"),
            "series": serializers.DictField(help_text="raw: metric -> values; rollups: metric -> {min, avg, max}"),
            "count": serializers.ListField(child=serializers.IntegerField(), required=False),
        })},
        summary="A device's telemetry over a time range",
    )
    def get(self, request, pk):
        device = get_object_or_404(Device.objects.only("id"), pk=pk)
        until = _parse_time(request.query_params.get("until"), "until") or timezone.now()
        since = _parse_time(request.query_params.get("since"), "since") or until - timedelta(hours=1)
        metrics = [m for m in request.query_params.get("metrics", "").split(",") if m] or None
        try:
            series = queries.telemetry_series(device.pk, since, until,
                                              request.query_params.get("resolution") or None, metrics)
        except queries.QueryError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"device_id": str(device.pk), **series.as_dict()})


class FleetSummaryView(APIView):
    """Fleet-wide counts and metrics."""

    @extend_schema(
        parameters=[OpenApiParameter("window", OpenApiTypes.INT, description="Seconds (default 300).")],
        responses={200: OpenApiResponse(OpenApiTypes.OBJECT, description=(
            '{"at", "devices": {"total", "by_status"}, "presence": {"online", "late", "offline", '
            '"unknown"}, "alerts": {"pending", "firing"}, "telemetry": {"window_s", '
            '"reporting_devices", "samples", "dropped_samples_total", "metrics": {metric: '
            '{"avg", "min", "max"}}}}'))},
        summary="Fleet-wide presence counts, open alerts and aggregate metrics",
    )
    def get(self, request):
        try:
            window = int(request.query_params.get("window", queries.SUMMARY_WINDOW_S))
        except ValueError:
            window = 0
        if not 10 <= window <= 86400:
            return Response({"detail": "window must be 10..86400 seconds"}, status=400)
        return Response(queries.fleet_summary(timezone.now(), window))


# --- Operators: alert rules, alerts, presence events ----------------------------------------------


class AlertRuleSerializer(serializers.ModelSerializer):
    label_selector = serializers.DictField(child=serializers.CharField(), required=False)

    class Meta:
        model = AlertRule
        fields = ["id", "name", "metric", "comparison", "threshold", "clear_threshold", "for_s",
                  "window_s", "label_selector", "enabled", "webhook_url", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_webhook_url(self, value: str) -> str:
        if value and not value.lower().startswith(("http://", "https://")):
            raise serializers.ValidationError("must be an http(s) URL")
        return value

    def validate_window_s(self, value: int) -> int:
        if not 10 <= value <= 86400:
            raise serializers.ValidationError("must be 10..86400 seconds")
        return value


class AlertRuleViewSet(viewsets.ModelViewSet):
    """Alert rules: viewers read, operators change; every change is audited."""

    queryset = AlertRule.objects.all()
    serializer_class = AlertRuleSerializer
    filterset_fields = ["metric", "enabled"]
    search_fields = ["name"]

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(self.request.user, *args, ip=client_ip(self.request), **kwargs)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "message_dict")
                                              else exc.messages) from None

    def perform_create(self, serializer):
        serializer.instance = self._call(rules.create_rule, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = self._call(rules.update_rule, serializer.instance, **serializer.validated_data)

    def perform_destroy(self, instance):
        rules.delete_rule(self.request.user, instance, ip=client_ip(self.request))


class AlertSerializer(serializers.ModelSerializer):
    device_name = serializers.CharField(source="device.name", read_only=True)
    rule_name = serializers.CharField(source="rule.name", read_only=True, default=None)

    class Meta:
        model = Alert
        fields = ["id", "kind", "rule", "rule_name", "device", "device_name", "state", "started_at",
                  "fired_at", "resolved_at", "value", "last_value"]


class AlertFilter(django_filters.FilterSet):
    state = django_filters.MultipleChoiceFilter(choices=Alert._meta.get_field("state").choices)
    since = UTCDateTimeFilter(field_name="started_at", lookup_expr="gte")
    until = UTCDateTimeFilter(field_name="started_at", lookup_expr="lt")

    class Meta:
        model = Alert
        fields = ["state", "kind", "rule", "device", "since", "until"]


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts (pending, firing, resolved), newest first."""

    queryset = Alert.objects.select_related("device", "rule")
    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    ordering_fields = ["started_at", "fired_at", "resolved_at"]


class PresenceEventSerializer(serializers.ModelSerializer):
    device_name = serializers.CharField(source="device.name", read_only=True)

    class Meta:
        model = PresenceEvent
        fields = ["id", "device", "device_name", "from_state", "to_state", "at", "last_seen"]


class PresenceEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Presence transitions of devices, newest first."""

    queryset = PresenceEvent.objects.select_related("device")
    serializer_class = PresenceEventSerializer
    filterset_fields = ["device", "to_state"]
