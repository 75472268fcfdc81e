from django.urls import path
from rest_framework.routers import DefaultRouter

from . import agent, agent_deployments, deployments, telemetry, views

router = DefaultRouter()
router.register("devices", views.DeviceViewSet, basename="device")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("api-tokens", views.ApiTokenViewSet, basename="apitoken")
router.register("users", views.UserViewSet, basename="user")
router.register("audit", views.AuditEventViewSet, basename="auditevent")
router.register("deployments", deployments.DeploymentViewSet, basename="deployment")
router.register("alert-rules", telemetry.AlertRuleViewSet, basename="alertrule")
router.register("alerts", telemetry.AlertViewSet, basename="alert")
router.register("presence-events", telemetry.PresenceEventViewSet, basename="presenceevent")

agent_urlpatterns = [
    path("agent/enroll", agent.EnrollView.as_view(), name="agent-enroll"),
    path("agent/inventory", agent.InventoryView.as_view(), name="agent-inventory"),
    path("agent/rotate-token", agent.RotateTokenView.as_view(), name="agent-rotate-token"),
    path("agent/config", agent.AgentConfigView.as_view(), name="agent-config"),
    path("agent/telemetry", telemetry.TelemetryView.as_view(), name="agent-telemetry"),
    path("agent/desired-state", agent_deployments.DesiredStateView.as_view(), name="agent-desired-state"),
    path("agent/artifacts/<uuid:variant_id>", agent_deployments.ArtifactView.as_view(), name="agent-artifact"),
    path("agent/reports", agent_deployments.ReportsView.as_view(), name="agent-reports"),
]

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("devices/<uuid:device_id>/deployments/", deployments.DeviceDeploymentsView.as_view(),
         name="device-deployments"),
    path("devices/<uuid:pk>/telemetry", telemetry.DeviceTelemetryView.as_view(), name="device-telemetry"),
    path("fleet/summary", telemetry.FleetSummaryView.as_view(), name="fleet-summary"),
    *agent_urlpatterns,
    *router.urls,
]
