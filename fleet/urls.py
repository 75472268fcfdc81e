from django.urls import path

from .views import alerts, audit, compression, deployments, devices, overview, tokens, users

urlpatterns = [
    path("", overview.overview, name="overview"),
    # Devices
    path("devices/", devices.device_list, name="devices"),
    path("devices/bulk/", devices.device_bulk, name="devices-bulk"),
    path("devices/pending/", devices.pending, name="pending"),
    path("devices/<uuid:pk>/", devices.device_detail, name="device"),
    path("devices/<uuid:pk>/labels/", devices.device_labels, name="device-labels"),
    path("devices/<uuid:pk>/metrics/", devices.device_metrics, name="device-metrics"),
    path("devices/<uuid:pk>/<str:action>/", devices.device_action, name="device-action"),
    path("enrollment-tokens/", tokens.token_list, name="tokens"),
    path("enrollment-tokens/<int:pk>/revoke/", tokens.token_revoke, name="token-revoke"),
    # Models and compression
    path("models/", compression.model_list, name="models"),
    path("models/new/", compression.model_create, name="model-create"),
    path("models/<int:pk>/", compression.model_detail, name="model"),
    path("versions/<uuid:pk>/", compression.version_detail, name="version"),
    path("jobs/", compression.job_list, name="jobs"),
    path("jobs/new/", compression.job_new, name="job-new"),
    path("jobs/<uuid:pk>/", compression.job_detail, name="job"),
    path("jobs/<uuid:pk>/cancel/", compression.job_cancel, name="job-cancel"),
    path("variants/<uuid:pk>/", compression.variant_detail, name="variant"),
    # Deployments
    path("deployments/", deployments.deployment_list, name="deployments"),
    path("deployments/new/", deployments.deployment_new, name="deployment-new"),
    path("deployments/preview/", deployments.deployment_preview, name="deployment-preview"),
    path("deployments/<uuid:pk>/", deployments.deployment_detail, name="deployment"),
    path("deployments/<uuid:pk>/<str:action>/", deployments.deployment_action, name="deployment-action"),
    # Alerts, audit, users
    path("alerts/", alerts.alert_list, name="alerts"),
    path("alerts/rules/new/", alerts.rule_edit, name="rule-new"),
    path("alerts/rules/<int:pk>/", alerts.rule_edit, name="rule"),
    path("alerts/rules/<int:pk>/delete/", alerts.rule_delete, name="rule-delete"),
    path("audit/", audit.audit_log, name="audit"),
    path("users/", users.user_list, name="users"),
    path("users/new/", users.user_create, name="user-create"),
    path("users/<int:pk>/role/", users.user_role, name="user-role"),
    path("users/<int:pk>/api-tokens/", users.api_token_create, name="api-token-create"),
    path("api-tokens/<int:pk>/revoke/", users.api_token_revoke, name="api-token-revoke"),
]
