"""Permission classes: operators' endpoints by role, agent endpoints by device status."""

from __future__ import annotations

from rest_framework import exceptions, permissions

from .models import DeviceStatus
from .roles import ADMIN, OPERATOR, VIEWER, has_role


def _is_device(request) -> bool:
    return getattr(request.user, "is_device", False)


class _RolePermission(permissions.BasePermission):
    read_role = VIEWER
    write_role = OPERATOR

    def has_permission(self, request, view) -> bool:
        if _is_device(request):
            raise exceptions.PermissionDenied("Device tokens cannot use the operators' API.")
        if not request.user or not request.user.is_authenticated:
            return False
        role = self.read_role if request.method in permissions.SAFE_METHODS else self.write_role
        role = getattr(view, "required_roles", {}).get(getattr(view, "action", None), role)
        return has_role(request.user, role)


class ViewerReadOperatorWrite(_RolePermission):
    """Viewers read; operators (and admins) change. A view may raise a specific action's role
    with ``required_roles = {"action": ADMIN}``."""


class AdminOnly(_RolePermission):
    """Users and API tokens: admins only, for reading too."""

    read_role = ADMIN
    write_role = ADMIN


class ActiveDevice(permissions.BasePermission):
    """Agent endpoints: a device token of a device an operator has admitted."""

    def has_permission(self, request, view) -> bool:
        if not _is_device(request):
            return False
        device = request.user.device
        if device.status != DeviceStatus.ACTIVE:
            messages = {
                DeviceStatus.PENDING: "device is pending approval by an operator",
                DeviceStatus.DISABLED: "device has been disabled by an operator",
                DeviceStatus.REJECTED: "device enrollment was rejected by an operator",
                DeviceStatus.DECOMMISSIONED: "device has been decommissioned",
            }
            raise DeviceNotActive(messages.get(device.status, "device is not active"), device.status)
        return True


class DeviceNotActive(exceptions.PermissionDenied):
    def __init__(self, message: str, status: str):
        super().__init__({"detail": message, "status": status, "code": "device_not_active"})
