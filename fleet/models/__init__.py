"""Fleet models. Each area has its own module; this package re-exports them."""

from .audit import AuditEvent
from .devices import Device, DeviceCredential, DeviceStatus
from .tokens import ApiToken, EnrollmentToken

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Device",
    "DeviceCredential",
    "DeviceStatus",
    "EnrollmentToken",
]
