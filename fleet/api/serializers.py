from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from fleet.models import ApiToken, AuditEvent, Device, EnrollmentToken
from fleet.roles import ROLES, role_of

from .fields import LabelsField

User = get_user_model()


class DeviceSerializer(serializers.ModelSerializer):
    labels = LabelsField(required=False)

    class Meta:
        model = Device
        fields = [
            "id", "name", "status", "fingerprint", "labels", "hostname", "os", "arch", "cpu_model",
            "cpu_cores", "memory_total_bytes", "disk_total_bytes", "agent_version",
            "onnxruntime_version", "execution_providers", "enrolled_at", "last_seen",
            "created_at", "updated_at",
        ]
        read_only_fields = [f for f in fields if f not in ("name", "labels")]


class DeviceDetailSerializer(DeviceSerializer):
    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "inventory"]
        read_only_fields = [*DeviceSerializer.Meta.read_only_fields, "inventory"]


class DeviceUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    labels = LabelsField(required=False)


class PreprovisionSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    fingerprint = serializers.CharField(max_length=200)
    labels = LabelsField(required=False, default=dict)

    def validate_fingerprint(self, value):
        if Device.objects.filter(fingerprint=value).exclude(status="decommissioned").exists():
            raise serializers.ValidationError("a device with this fingerprint already exists")
        return value


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    labels = LabelsField(required=False, default=dict)
    state = serializers.CharField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = EnrollmentToken
        fields = [
            "id", "description", "prefix", "auto_accept", "labels", "max_uses", "uses", "expires_at",
            "revoked_at", "state", "created_by", "created_at",
        ]
        read_only_fields = ["prefix", "uses", "revoked_at", "created_by", "created_at"]

    def validate_max_uses(self, value):
        if value is not None and value < 1:
            raise serializers.ValidationError("max_uses must be at least 1 (or empty for unlimited)")
        return value


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The plain token. Shown only once.")

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "token"]


class ApiTokenSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", queryset=User.objects.all(), required=False)
    is_live = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "user", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at", "is_live"]
        read_only_fields = ["prefix", "created_at", "revoked_at", "last_used_at"]


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The plain token. Shown only once.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class UserSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=[*ROLES], required=False, allow_null=True)
    password = serializers.CharField(write_only=True, required=False, min_length=10)

    class Meta:
        model = User
        fields = ["id", "username", "email", "is_active", "role", "password", "last_login", "date_joined"]
        read_only_fields = ["last_login", "date_joined"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["role"] = role_of(instance) if instance.is_active else None
        return data

class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "object_type", "object_id", "object_repr",
                  "before", "after", "ip"]
        read_only_fields = fields


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.CharField(allow_null=True)
