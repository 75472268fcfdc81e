"""Overview, enrollment tokens, alerts, audit log and users: content, fragments, roles, CSRF."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from fleet import services
from fleet.models import ApiToken, AuditEvent, Device, DeviceStatus, EnrollmentToken
from fleet.secrets import hash_token

pytestmark = pytest.mark.django_db


# --- Overview -----------------------------------------------------------------------------------


def test_overview_counts_and_live_fragment(viewer_client, make_devices):
    make_devices(3)
    make_devices(2, status=DeviceStatus.PENDING, prefix="p")
    resp = viewer_client.get("/")
    body = resp.content.decode()
    assert resp.status_code == 200
    assert 'data-testid="total-devices">5<' in body
    assert 'hx-trigger="every 5s"' in body  # refreshes itself
    assert "No telemetry in the last 5 minutes" in body  # fleet health guarded while empty
    frag = viewer_client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert frag.lstrip().startswith('<div id="overview-live"') and "<html" not in frag


def test_overview_presence_tiles(viewer_client, make_devices):
    make_devices(4)  # active, never reported: offline
    body = viewer_client.get("/").content.decode()
    assert 'data-testid="count-offline"><span class="num">4<' in body
    assert 'data-testid="count-online"><span class="num">0<' in body


# --- Enrollment tokens -------------------------------------------------------------------------


def test_create_token_shows_it_once_with_the_agent_command(operator_client):
    resp = operator_client.post("/enrollment-tokens/", {"description": "berlin cams", "auto_accept": "on",
                                                        "labels": "site=berlin", "max_uses": "5"})
    assert resp.status_code == 200
    assert resp["Cache-Control"] == "no-store"
    token = resp.context["new"].token
    body = resp.content.decode()
    assert f"edgefleet-agent enroll --server http://testserver --token {token}" in body
    assert 'data-copy="#agent-command"' in body
    obj = EnrollmentToken.objects.get()
    assert obj.token_hash == hash_token(token) and obj.labels == {"site": "berlin"} and obj.auto_accept
    assert obj.max_uses == 5
    # Never shown again.
    assert token not in operator_client.get("/enrollment-tokens/").content.decode()


def test_token_form_errors(operator_client):
    resp = operator_client.post("/enrollment-tokens/", {"labels": "oops", "max_uses": "0"})
    assert resp.status_code == 400
    body = resp.content.decode()
    assert "is not key=value" in body and "greater than or equal to 1" in body
    assert EnrollmentToken.objects.count() == 0


def test_revoke_token(operator_client, viewer_client):
    new = services.create_enrollment_token(None)
    assert viewer_client.post(f"/enrollment-tokens/{new.obj.pk}/revoke/").status_code == 403
    resp = operator_client.post(f"/enrollment-tokens/{new.obj.pk}/revoke/", follow=True)
    assert "revoked" in resp.content.decode()
    new.obj.refresh_from_db()
    assert new.obj.revoked_at is not None


def test_viewer_sees_tokens_but_no_revoke(viewer_client):
    services.create_enrollment_token(None, description="for the viewer")
    body = viewer_client.get("/enrollment-tokens/").content.decode()
    assert "for the viewer" in body and "Revoke</button>" not in body


# --- Alerts and rules ----------------------------------------------------------------------------


def test_alerts_page_and_rule_crud(viewer_client, operator_client, make_devices):
    from fleet.models.telemetry import Alert, AlertRule

    device = make_devices(1)[0]
    from django.utils import timezone

    rule = AlertRule.objects.create(name="hot", metric="temperature_c", threshold=80)
    Alert.objects.create(rule=rule, device=device, state="firing", started_at=timezone.now(),
                         fired_at=timezone.now(), value=91.5)
    body = viewer_client.get("/alerts/").content.decode()
    assert "hot" in body and "firing" in body and "91.50" in body and "New alert rule" not in body
    assert 'data-testid="firing-count">1<' in viewer_client.get("/").content.decode()

    assert viewer_client.post("/alerts/rules/new/", {}).status_code == 403
    resp = operator_client.post("/alerts/rules/new/", {
        "name": "cpu", "metric": "cpu_percent", "comparison": "gt", "threshold": "90", "clear_threshold": "95",
        "for_s": "60", "window_s": "60", "label_selector": "site=berlin", "enabled": "on"})
    assert resp.status_code == 400 and "healthy side" in resp.content.decode()
    resp = operator_client.post("/alerts/rules/new/", {
        "name": "cpu", "metric": "cpu_percent", "comparison": "gt", "threshold": "90", "clear_threshold": "80",
        "for_s": "60", "window_s": "60", "label_selector": "site=berlin", "enabled": "on"})
    assert resp.status_code == 302
    created = AlertRule.objects.get(name="cpu")
    assert created.label_selector == {"site": "berlin"}
    assert AuditEvent.objects.filter(action="alert_rule.create").exists()
    operator_client.post(f"/alerts/rules/{created.pk}/delete/")
    assert not AlertRule.objects.filter(name="cpu").exists()


# --- Audit log -------------------------------------------------------------------------------------


def test_audit_filters(viewer_client, operator_client, make_devices):
    a, b = make_devices(2, status=DeviceStatus.PENDING)
    operator_client.post(f"/devices/{a.pk}/accept/")
    operator_client.post(f"/devices/{b.pk}/reject/")
    body = viewer_client.get("/audit/?action=device.accept").content.decode()
    assert "device.accept" in body and "device.reject</code>" not in body
    body = viewer_client.get(f"/audit/?object_type=fleet.device&object_id={b.pk}").content.decode()
    assert "device.reject" in body and "device.accept</code>" not in body
    resp = viewer_client.get("/audit/?since=yesterday")
    assert resp.status_code == 400 and "since" in resp.content.decode()
    frag = viewer_client.get("/audit/?actor=otto", HTTP_HX_REQUEST="true").content.decode()
    assert frag.lstrip().startswith('<div id="audit-table">') and "otto-operator" in frag


# --- Users (admin only) ---------------------------------------------------------------------------


def test_users_admin_only(viewer_client, operator_client, admin_client_):
    assert viewer_client.get("/users/").status_code == 403
    assert operator_client.get("/users/").status_code == 403
    assert operator_client.post("/users/new/", {"username": "x", "role": "admin", "password": "p" * 12}).status_code == 403
    assert "Users</a>" not in operator_client.get("/").content.decode()
    assert admin_client_.get("/users/").status_code == 200


def test_admin_creates_user_changes_role_and_tokens(admin_client_, admin):
    resp = admin_client_.post("/users/new/", {"username": "nina", "role": "viewer", "password": "short"})
    assert resp.status_code == 400 and "at least 10 characters" in resp.content.decode()
    admin_client_.post("/users/new/", {"username": "nina", "role": "viewer", "password": "long enough pw"})
    nina = get_user_model().objects.get(username="nina")
    assert list(nina.groups.values_list("name", flat=True)) == ["viewer"]
    admin_client_.post(f"/users/{nina.pk}/role/", {"role": "operator", "is_active": "on"})
    assert list(nina.groups.values_list("name", flat=True)) == ["operator"]
    # An admin cannot demote themself.
    body = admin_client_.post(f"/users/{admin.pk}/role/", {"role": "viewer", "is_active": "on"}, follow=True).content.decode()
    assert "cannot remove your own admin role" in body
    resp = admin_client_.post(f"/users/{nina.pk}/api-tokens/", {"name": "ci"})
    token = resp.context["new_token"].token
    assert token.startswith("efu_") and token in resp.content.decode()
    obj = ApiToken.objects.get(user=nina)
    admin_client_.post(f"/api-tokens/{obj.pk}/revoke/")
    obj.refresh_from_db()
    assert obj.revoked_at is not None


def test_csrf_enforced_on_user_and_token_forms(admin):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    assert client.post("/users/new/", {"username": "z", "role": "viewer", "password": "x" * 12}).status_code == 403
    assert client.post("/enrollment-tokens/", {"description": "x"}).status_code == 403
    assert EnrollmentToken.objects.count() == 0


def test_every_page_renders_for_a_viewer(viewer_client, make_devices):
    make_devices(2)
    for url in ("/", "/devices/", "/devices/pending/", "/enrollment-tokens/", "/models/", "/jobs/",
                "/deployments/", "/alerts/", "/audit/"):
        resp = viewer_client.get(url)
        assert resp.status_code == 200, url
    assert viewer_client.get("/jobs/new/").status_code == 403
    assert viewer_client.get("/deployments/new/").status_code == 403
    assert Device.objects.count() == 2
