"""Fleet models. Each area has its own module; this package re-exports them."""

from .audit import AuditEvent
from .deployments import (
    AssignmentState,
    Deployment,
    DeploymentReport,
    DeploymentState,
    DesiredStateVersion,
    DeviceAssignment,
    HealthCheck,
    VariantBenchmark,
)
from .devices import Device, DeviceCredential, DeviceStatus
from .telemetry import (
    METRICS,
    Alert,
    AlertKind,
    AlertRule,
    AlertState,
    Comparison,
    DeliveryState,
    DevicePresence,
    PresenceEvent,
    PresenceState,
    Rollup1h,
    Rollup1m,
    RollupDirty,
    TelemetrySample,
    WebhookDelivery,
)
from .tokens import ApiToken, EnrollmentToken

__all__ = [
    "METRICS",
    "Alert",
    "AlertKind",
    "AlertRule",
    "AlertState",
    "Comparison",
    "DeliveryState",
    "DevicePresence",
    "PresenceEvent",
    "PresenceState",
    "Rollup1h",
    "Rollup1m",
    "RollupDirty",
    "TelemetrySample",
    "WebhookDelivery",
    "ApiToken",
    "AssignmentState",
    "AuditEvent",
    "Deployment",
    "DeploymentReport",
    "DeploymentState",
    "DesiredStateVersion",
    "Device",
    "DeviceAssignment",
    "DeviceCredential",
    "DeviceStatus",
    "EnrollmentToken",
    "HealthCheck",
    "VariantBenchmark",
]
