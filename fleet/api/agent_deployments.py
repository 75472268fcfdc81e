"""Agent protocol v1, deployments: desired state (ETag/304), artifacts (HTTP Range) and
progress reports. See fleet.desired_state for the logic and docs/deployments.md for the agent's
side."""

from __future__ import annotations

import os
import re

from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.response import Response

from fleet import desired_state
from fleet.auth import LeanDeviceTokenAuthentication
from fleet.models import DesiredStateVersion
from fleet.schema import DEVICE_TOKEN_SCHEME

from .agent import DeviceAPIView

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class DesiredStateAuthentication(LeanDeviceTokenAuthentication):
    """The device token check and the device's desired-state generation in one statement: an
    unchanged poll (the common case, 10,000 devices every 30 s) costs one query."""

    extra = {"generation": ("v.generation",
                            f"LEFT JOIN {DesiredStateVersion._meta.db_table} v ON v.device_id = d.id")}


class DesiredStateView(DeviceAPIView):
    authentication_classes = [DesiredStateAuthentication]

    @extend_schema(
        parameters=[OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER)],
        responses={200: OpenApiResponse(description="The desired state document (see docs/deployments.md)"),
                   304: OpenApiResponse(description="Unchanged since the ETag sent in If-None-Match")},
        auth=DEVICE_TOKEN_SCHEME,
        summary="The models this device should run",
        tags=["agent"],
    )
    def get(self, request):
        device = self.device
        gen = request.auth["generation"] or 0  # no row yet: nothing was ever assigned
        tag = desired_state.etag(device, gen)
        if tag in _etags(request.META.get("HTTP_IF_NONE_MATCH", "")):
            resp = HttpResponse(status=304)
            resp["ETag"] = tag
            return resp
        resp = Response(desired_state.document(device, gen))
        resp["ETag"] = tag
        resp["Cache-Control"] = "private, no-cache"
        return resp


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


class _Slice:
    """A file object limited to ``length`` bytes from ``start``, for ranged answers (no
    ``fileno``, so servers that would ``sendfile`` the whole file read it instead)."""

    def __init__(self, fh, start: int, length: int):
        fh.seek(start)
        self.fh, self.left = fh, length

    def __iter__(self):
        while self.left > 0:
            data = self.fh.read(min(CHUNK, self.left))
            if not data:
                break
            self.left -= len(data)
            yield data
        self.fh.close()

    def close(self):
        self.fh.close()


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """``bytes=a-b`` → (start, end inclusive); None to answer the whole file (no or multiple
    ranges); "unsatisfiable" for a range outside the file."""
    header = header.strip()
    if not header or "," in header:
        return None
    m = _RANGE.match(header.replace(" ", ""))
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return "unsatisfiable"
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class ArtifactView(DeviceAPIView):
    authentication_classes = [LeanDeviceTokenAuthentication]

    @extend_schema(
        parameters=[OpenApiParameter("Range", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="bytes=START-[END] (one range)")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                   (206, "application/octet-stream"): OpenApiTypes.BINARY,
                   403: OpenApiResponse(description="Not assigned to this device"),
                   404: OpenApiResponse(description="No such variant"),
                   416: OpenApiResponse(description="Range not satisfiable")},
        auth=DEVICE_TOKEN_SCHEME,
        summary="Download a variant assigned to this device",
        tags=["agent"],
    )
    def get(self, request, variant_id):
        from compression import storage
        from compression.models import Variant

        variant = Variant.objects.filter(pk=variant_id).only("id", "file", "sha256", "size_bytes").first()
        if variant is None or not variant.file:
            return Response({"detail": "no such artifact"}, status=status.HTTP_404_NOT_FOUND)
        if not desired_state.may_download(self.device, variant.pk):
            return Response({"detail": "this variant is not assigned to this device"},
                            status=status.HTTP_403_FORBIDDEN)
        try:
            path = storage.path_of(variant.file)
            fh = open(path, "rb")  # noqa: SIM115 - the response closes it
        except (OSError, ValueError):
            return Response({"detail": "artifact file is missing on the server"}, status=status.HTTP_404_NOT_FOUND)
        size = os.fstat(fh.fileno()).st_size
        tag = f'"{variant.sha256}"'
        wanted = parse_range(request.META.get("HTTP_RANGE", ""), size)
        if_range = request.META.get("HTTP_IF_RANGE", "").strip()
        if if_range and if_range != tag:
            wanted = None  # the client's partial file is of another artifact: send it whole
        if wanted == "unsatisfiable":
            fh.close()
            resp = HttpResponse(status=416)
            resp["Content-Range"] = f"bytes */{size}"
        elif wanted is None:
            resp = FileResponse(fh, content_type="application/octet-stream")
            resp["Content-Length"] = str(size)
        else:
            start, end = wanted
            resp = StreamingHttpResponse(_Slice(fh, start, end - start + 1), status=206,
                                         content_type="application/octet-stream")
            resp["Content-Range"] = f"bytes {start}-{end}/{size}"
            resp["Content-Length"] = str(end - start + 1)
        resp["Accept-Ranges"] = "bytes"
        resp["ETag"] = tag
        resp["X-Checksum-Sha256"] = variant.sha256
        return resp


class BenchmarkSerializer(serializers.Serializer):
    p50_ms = serializers.FloatField(required=False, min_value=0)
    p95_ms = serializers.FloatField(required=False, min_value=0)
    peak_rss_bytes = serializers.IntegerField(required=False, min_value=0)


class ReportSerializer(serializers.Serializer):
    report_id = serializers.CharField(max_length=64, required=False,
                                      help_text="Unique per device; a replayed report is stored once.")
    model = serializers.CharField(max_length=100)
    variant_id = serializers.UUIDField(required=False, allow_null=True)
    state = serializers.ChoiceField(choices=desired_state.REPORT_STATES)
    progress = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    error = serializers.CharField(required=False, allow_blank=True, max_length=4000)
    benchmark = BenchmarkSerializer(required=False)
    ts = serializers.CharField(required=False, max_length=40)


class ReportsRequest(serializers.Serializer):
    reports = ReportSerializer(many=True, min_length=1, max_length=100)


ReportsResponse = inline_serializer("ReportsResponse", {
    "results": inline_serializer("ReportResult", {
        "report_id": serializers.CharField(), "accepted": serializers.BooleanField(),
        "duplicate": serializers.BooleanField(), "state": serializers.CharField(allow_null=True),
    }, many=True),
})


class ReportsView(DeviceAPIView):
    @extend_schema(request=ReportsRequest, responses={200: ReportsResponse},
                   summary="Deployment progress and on-device benchmarks (idempotent per report_id)",
                   tags=["agent"])
    def post(self, request):
        data = request.data
        if isinstance(data, dict) and "reports" not in data:
            data = {"reports": [data]}  # a single report is accepted as is
        ser = ReportsRequest(data=data)
        ser.is_valid(raise_exception=True)
        reports = []
        for report in ser.validated_data["reports"]:
            report = dict(report)
            if report.get("variant_id") is not None:
                report["variant_id"] = str(report["variant_id"])
            report["benchmark"] = dict(report.get("benchmark") or {})
            reports.append(report)
        return Response({"results": desired_state.apply_reports(self.device, reports)})
