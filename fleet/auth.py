"""Authentication for operators' API tokens and for devices.

Both arrive as ``Authorization: Bearer <token>`` (``Token <token>`` works too for API tokens);
the prefix says which kind it is. Only the SHA-256 digest is looked up.
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import authentication, exceptions

from .models import ApiToken, DeviceCredential
from .secrets import DEVICE_PREFIX, USER_PREFIX, hash_token


def _bearer(request, keywords=("bearer", "token")) -> str | None:
    header = authentication.get_authorization_header(request).decode("latin-1")
    if not header:
        return None
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() not in keywords:
        return None
    return parts[1]


class DevicePrincipal:
    """Stands in for ``request.user`` when a device calls: authenticated, but never an operator."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    is_device = True

    def __init__(self, device):
        self.device = device
        self.pk = None
        self.id = None

    def __str__(self) -> str:
        return f"device:{self.device.name}"

    def has_perm(self, *args, **kwargs) -> bool:
        return False


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Operators' API tokens (``efu_…``). Device tokens are refused on operators' endpoints with
    a 403 by the permission classes, so they are recognised here too rather than called invalid."""

    def authenticate(self, request):
        token = _bearer(request)
        if token is None:
            return None
        if token.startswith(DEVICE_PREFIX):
            return DeviceTokenAuthentication().authenticate(request)
        if not token.startswith(USER_PREFIX):
            raise exceptions.AuthenticationFailed("Unknown token format: API tokens start with efu_.")
        api_token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token)).first()
        if api_token is None or not api_token.is_live:
            raise exceptions.AuthenticationFailed("API token is invalid, expired or revoked.")
        if not api_token.user.is_active:
            raise exceptions.AuthenticationFailed("The user of this API token is disabled.")
        now = timezone.now()
        if api_token.last_used_at is None or (now - api_token.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        return api_token.user, api_token

    def authenticate_header(self, request) -> str:
        return "Bearer"


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    """Device tokens (``efd_…``) on the agent protocol."""

    def authenticate(self, request):
        token = _bearer(request, keywords=("bearer",))
        if token is None:
            return None
        if not token.startswith(DEVICE_PREFIX):
            raise exceptions.AuthenticationFailed("This endpoint takes a device token (efd_…).")
        credential = (
            DeviceCredential.objects.select_related("device")
            .filter(token_hash=hash_token(token), revoked_at__isnull=True)
            .first()
        )
        if credential is None:
            raise exceptions.AuthenticationFailed(
                "Device token is invalid or revoked; enroll the device again."
            )
        return DevicePrincipal(credential.device), credential

    def authenticate_header(self, request) -> str:
        return "Bearer"
