"""Authentication for operators' API tokens and for devices.

Both arrive as ``Authorization: Bearer <token>`` (``Token <token>`` works too for API tokens);
the prefix says which kind it is. Only the SHA-256 digest is looked up.
"""

from __future__ import annotations

import uuid

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from rest_framework import authentication, exceptions

from .models import ApiToken, Device, DeviceCredential
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
        found = self.lookup(hash_token(token))
        if found is None:
            raise exceptions.AuthenticationFailed(
                "Device token is invalid or revoked; enroll the device again."
            )
        return found

    def lookup(self, digest: str):
        """(principal, auth) for an unrevoked credential with this digest, or None."""
        credential = (DeviceCredential.objects.select_related("device")
                      .filter(token_hash=digest, revoked_at__isnull=True).first())
        return None if credential is None else (DevicePrincipal(credential.device), credential)

    def authenticate_header(self, request) -> str:
        return "Bearer"


class LeanDeviceTokenAuthentication(DeviceTokenAuthentication):
    """The device token check of ``DeviceTokenAuthentication``, cut to one SQL statement, for the
    endpoints every device calls all the time (telemetry reports, desired-state polls).

    Same rule (an unrevoked credential with this SHA-256 digest) and the same answers, but the
    credential and three columns of its device come back from one raw query instead of an ORM
    query that builds the whole device (its JSON inventory included) on every call. Nothing is
    cached: revoking a credential, rotating it, or changing the device's status takes effect on the
    very next call. The principal's device has ``id``, ``name`` and ``status`` loaded; any other
    field is fetched from the database when read.

    Subclasses may fetch more per call in the same statement: ``extra`` maps a name to
    ``(SQL expression, LEFT JOIN clause)`` (tables aliased away from ``c`` and ``d``, the
    credential and the device); the values come back as the ``request.auth`` dict.

    The query also serves as the connection's health check: Django's ``CONN_HEALTH_CHECKS`` would
    spend one more round trip (``SELECT 1``) per request on a persistent connection; instead, a
    connection that turns out to be dead is closed and the query retried once on a new one."""

    extra: dict[str, tuple[str, str]] = {}
    _sql: str | None = None

    @classmethod
    def sql(cls) -> str:
        if cls.__dict__.get("_sql") is None:
            columns = "".join(f", {expr}" for expr, _ in cls.extra.values())
            joins = "".join(f" {join}" for _, join in cls.extra.values())
            cls._sql = (
                f"SELECT d.id, d.name, d.status{columns} FROM {DeviceCredential._meta.db_table} c "
                f"JOIN {Device._meta.db_table} d ON d.id = c.device_id{joins} "
                "WHERE c.token_hash = %s AND c.revoked_at IS NULL"
            )
        return cls._sql

    def lookup(self, digest: str):
        fresh_check = connection.connection is None or connection.health_check_done
        connection.health_check_done = True
        try:
            row = self._fetch(digest)
        except (InterfaceError, OperationalError):
            if fresh_check or not connection.get_autocommit():
                raise
            connection.close()  # a persistent connection the server dropped: reconnect once
            row = self._fetch(digest)
        if row is None:
            return None
        device_id, name, status_, *rest = row
        if not isinstance(device_id, uuid.UUID):
            device_id = uuid.UUID(device_id)  # SQLite keeps UUIDs as text
        device = Device.from_db(connection.alias, ["id", "name", "status"], [device_id, name, status_])
        return DevicePrincipal(device), dict(zip(self.extra, rest, strict=True))

    def _fetch(self, digest: str):
        with connection.cursor() as cur:
            cur.execute(self.sql(), [digest])
            return cur.fetchone()
