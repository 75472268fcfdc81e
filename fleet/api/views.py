"""Operators' REST API v1: thin viewsets over fleet.services."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from fleet import services
from fleet.audit import client_ip
from fleet.filters import AuditEventFilter, DeviceFilter
from fleet.models import ApiToken, AuditEvent, Device, EnrollmentToken
from fleet.permissions import AdminOnly
from fleet.roles import role_of

from . import serializers as s

User = get_user_model()


def _conflict(exc: Exception) -> Response:
    return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


class DeviceViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Devices: list, filter by status and label, search by name; admit and retire them."""

    queryset = Device.objects.all()
    filterset_class = DeviceFilter
    search_fields = ["name", "hostname", "fingerprint"]
    ordering_fields = ["name", "status", "last_seen", "created_at"]

    def get_serializer_class(self):
        if self.action == "retrieve":
            return s.DeviceDetailSerializer
        if self.action == "create":
            return s.PreprovisionSerializer
        if self.action == "partial_update":
            return s.DeviceUpdateSerializer
        return s.DeviceSerializer

    @extend_schema(request=s.PreprovisionSerializer, responses={201: s.DeviceSerializer},
                   summary="Pre-provision a device by name and fingerprint")
    def create(self, request, *args, **kwargs):
        ser = s.PreprovisionSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        device = services.preprovision_device(request.user, ip=client_ip(request), **ser.validated_data)
        return Response(s.DeviceSerializer(device).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.DeviceUpdateSerializer, responses=s.DeviceSerializer,
                   summary="Rename a device or replace its labels")
    def partial_update(self, request, *args, **kwargs):
        device = self.get_object()
        ser = s.DeviceUpdateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        device = services.update_device(request.user, device, ip=client_ip(request), **ser.validated_data)
        return Response(s.DeviceSerializer(device).data)

    def _transition(self, request, name: str) -> Response:
        try:
            device = services.transition_device(request.user, self.get_object(), name, ip=client_ip(request))
        except services.InvalidTransition as exc:
            return _conflict(exc)
        return Response(s.DeviceSerializer(device).data)

    @extend_schema(request=None, responses=s.DeviceSerializer, summary="Admit a pending device")
    @action(detail=True, methods=["post"])
    def accept(self, request, pk=None):
        return self._transition(request, "accept")

    @extend_schema(request=None, responses=s.DeviceSerializer, summary="Refuse a pending device")
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        return self._transition(request, "reject")

    @extend_schema(request=None, responses=s.DeviceSerializer, summary="Disable a device")
    @action(detail=True, methods=["post"])
    def disable(self, request, pk=None):
        return self._transition(request, "disable")

    @extend_schema(request=None, responses=s.DeviceSerializer, summary="Re-enable a disabled device")
    @action(detail=True, methods=["post"])
    def enable(self, request, pk=None):
        return self._transition(request, "enable")

    @extend_schema(request=None, responses=s.DeviceSerializer, summary="Retire a device for good")
    @action(detail=True, methods=["post"])
    def decommission(self, request, pk=None):
        return self._transition(request, "decommission")

    @extend_schema(request=None, responses={200: dict}, summary="Revoke the device's tokens")
    @action(detail=True, methods=["post"], url_path="revoke-credentials")
    def revoke_credentials(self, request, pk=None):
        count = services.revoke_device_credentials(request.user, self.get_object(), ip=client_ip(request))
        return Response({"revoked": count})


class EnrollmentTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Enrollment tokens: the plain token is returned once, by create."""

    queryset = EnrollmentToken.objects.select_related("created_by")
    serializer_class = s.EnrollmentTokenSerializer
    filterset_fields = ["auto_accept"]

    @extend_schema(responses={201: s.EnrollmentTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        created = services.create_enrollment_token(
            request.user,
            description=data.get("description", ""),
            auto_accept=data.get("auto_accept", False),
            labels=data.get("labels", {}),
            max_uses=data.get("max_uses"),
            expires_at=data.get("expires_at"),
            ip=client_ip(request),
        )
        body = s.EnrollmentTokenSerializer(created.obj).data
        body["token"] = created.token
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.EnrollmentTokenSerializer, summary="Revoke a token")
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = services.revoke_enrollment_token(request.user, self.get_object(), ip=client_ip(request))
        return Response(s.EnrollmentTokenSerializer(token).data)


class ApiTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Users' API tokens (admins only). The plain token is returned once, by create."""

    queryset = ApiToken.objects.select_related("user")
    serializer_class = s.ApiTokenSerializer
    permission_classes = [AdminOnly]
    filterset_fields = ["user__username"]

    @extend_schema(responses={201: s.ApiTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        user = ser.validated_data.get("user") or request.user
        created = services.create_api_token(
            request.user, user, name=ser.validated_data["name"],
            expires_at=ser.validated_data.get("expires_at"), ip=client_ip(request),
        )
        body = s.ApiTokenSerializer(created.obj).data
        body["token"] = created.token
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.ApiTokenSerializer, summary="Revoke an API token")
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = services.revoke_api_token(request.user, self.get_object(), ip=client_ip(request))
        return Response(s.ApiTokenSerializer(token).data)


class UserViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin,
    mixins.UpdateModelMixin, viewsets.GenericViewSet,
):
    """Operators' accounts and their roles (admins only)."""

    queryset = User.objects.prefetch_related("groups").order_by("username")
    serializer_class = s.UserSerializer
    permission_classes = [AdminOnly]
    search_fields = ["username", "email"]

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = services.create_user(
            self.request.user, username=data.pop("username"), role=data.pop("role", None),
            ip=client_ip(self.request), **data)

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        role = data.pop("role") if "role" in data else services.UNSET
        try:
            services.update_user(self.request.user, serializer.instance, role=role,
                                 is_active=data.pop("is_active", None), ip=client_ip(self.request), **data)
        except services.SelfLockout as exc:
            raise PermissionDenied(str(exc)) from exc


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log: who did what, when, with before and after."""

    queryset = AuditEvent.objects.all()
    serializer_class = s.AuditEventSerializer
    filterset_class = AuditEventFilter
    search_fields = ["object_repr", "actor", "action"]


class MeView(APIView):
    """Who the caller is and which role they have."""

    @extend_schema(responses=s.MeSerializer)
    def get(self, request):
        return Response({"username": request.user.get_username(), "role": role_of(request.user)})
