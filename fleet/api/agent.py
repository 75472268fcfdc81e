"""Agent protocol v1 (see shared DESIGN.md): the endpoints devices call.

Enrollment is authenticated by the enrollment token in the body; everything else by the device
token (``Authorization: Bearer efd_…``). A device that is not active gets a 403 that names its
status, so the agent can tell "wait for an operator" from "stop".
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from fleet import services
from fleet.audit import client_ip
from fleet.auth import DeviceTokenAuthentication
from fleet.permissions import ActiveDevice


def agent_config() -> dict:
    """Settings the server hands to agents at enrollment."""
    return {"telemetry_interval_s": settings.EDGEFLEET["TELEMETRY_INTERVAL_S"], "batch_size": 3}


class EnrollRequest(serializers.Serializer):
    enrollment_token = serializers.CharField(max_length=200)
    name = serializers.CharField(max_length=100)
    fingerprint = serializers.CharField(max_length=200)
    inventory = serializers.DictField(required=False, default=dict)


EnrollResponse = inline_serializer(
    "EnrollResponse",
    {
        "device_id": serializers.UUIDField(),
        "device_token": serializers.CharField(help_text="Shown once; store it with mode 0600."),
        "status": serializers.ChoiceField(choices=["active", "pending", "disabled", "rejected"]),
        "reenrolled": serializers.BooleanField(),
        "config": serializers.DictField(),
    },
)


class EnrollThrottle(AnonRateThrottle):
    scope = "enroll"


class EnrollView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes = [EnrollThrottle]

    @extend_schema(
        request=EnrollRequest,
        responses={201: EnrollResponse, 400: OpenApiResponse(description="Malformed body"),
                   401: OpenApiResponse(description="Enrollment token wrong, expired, used up or revoked")},
        summary="Enroll a device with an enrollment token",
        tags=["agent"],
    )
    def post(self, request):
        ser = EnrollRequest(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        try:
            result = services.enroll_device(
                enrollment_token=data["enrollment_token"], name=data["name"],
                fingerprint=data["fingerprint"], inventory=data["inventory"], ip=client_ip(request),
            )
        except services.EnrollmentRefused as exc:
            return Response({"detail": str(exc), "code": "enrollment_refused"},
                            status=status.HTTP_401_UNAUTHORIZED)
        return Response(
            {
                "device_id": str(result.device.id),
                "device_token": result.device_token,
                "status": result.device.status,
                "reenrolled": result.reenrolled,
                "config": agent_config(),
            },
            status=status.HTTP_201_CREATED,
        )


class DeviceAPIView(APIView):
    """Base for agent endpoints: device token, active device."""

    authentication_classes = [DeviceTokenAuthentication]
    permission_classes = [ActiveDevice]

    @property
    def device(self):
        return self.request.user.device


class InventoryView(DeviceAPIView):
    @extend_schema(
        request=inline_serializer("InventoryRequest", {"hostname": serializers.CharField(required=False)}),
        responses={200: inline_serializer("InventoryResponse", {"changed": serializers.BooleanField()})},
        summary="Report the device's hardware and software facts",
        tags=["agent"],
    )
    def put(self, request):
        if not isinstance(request.data, dict):
            return Response({"detail": "inventory must be a JSON object"}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"changed": services.update_inventory(self.device, dict(request.data))})


class RotateTokenView(DeviceAPIView):
    @extend_schema(
        request=None,
        responses={200: inline_serializer("RotateResponse", {"device_token": serializers.CharField()})},
        summary="Replace this device's token; the old one stops working at once",
        tags=["agent"],
    )
    def post(self, request):
        token = services.rotate_device_credential(self.device, request.user, ip=client_ip(request))
        return Response({"device_token": token})


class AgentConfigView(DeviceAPIView):
    @extend_schema(responses={200: dict}, summary="Current agent settings", tags=["agent"])
    def get(self, request):
        return Response({"status": self.device.status, "config": agent_config()})
