"""Recording audit events. Every operator action and admission decision goes through here."""

from __future__ import annotations

from typing import Any

from .models import AuditEvent


def actor_of(user) -> tuple[Any, Any, str]:
    """(user, device, readable name) for whoever acts: a user, a device or the system."""
    if user is None:
        return None, None, "system"
    if getattr(user, "is_device", False):
        return None, user.device, f"device:{user.device.name}"
    if getattr(user, "is_authenticated", False):
        return user, None, user.get_username()
    return None, None, "anonymous"


def record(
    user,
    action: str,
    obj,
    *,
    before: dict | None = None,
    after: dict | None = None,
    ip: str | None = None,
    object_type: str | None = None,
) -> AuditEvent:
    """Append one audit event for ``action`` on ``obj`` by ``user`` (a User, a DevicePrincipal or
    None for the system)."""
    actor_user, actor_device, actor = actor_of(user)
    return AuditEvent.objects.create(
        actor_user=actor_user,
        actor_device=actor_device,
        actor=actor,
        action=action,
        object_type=object_type or obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        before=before,
        after=after,
        ip=ip,
    )


def client_ip(request) -> str | None:
    return request.META.get("REMOTE_ADDR") if request is not None else None
