from django.urls import path
from rest_framework.routers import DefaultRouter

from . import agent, views

router = DefaultRouter()
router.register("devices", views.DeviceViewSet, basename="device")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("api-tokens", views.ApiTokenViewSet, basename="apitoken")
router.register("users", views.UserViewSet, basename="user")
router.register("audit", views.AuditEventViewSet, basename="auditevent")

agent_urlpatterns = [
    path("agent/enroll", agent.EnrollView.as_view(), name="agent-enroll"),
    path("agent/inventory", agent.InventoryView.as_view(), name="agent-inventory"),
    path("agent/rotate-token", agent.RotateTokenView.as_view(), name="agent-rotate-token"),
    path("agent/config", agent.AgentConfigView.as_view(), name="agent-config"),
]

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    *agent_urlpatterns,
    *router.urls,
]
