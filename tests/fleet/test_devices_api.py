"""Operators' device API: listing, filtering, search, labels, lifecycle and the audit trail."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.models import AuditEvent, Device

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet_of_devices(db):
    rows = [
        Device(name=f"cam-{i:03d}", fingerprint=f"fp-{i}", status="active" if i % 3 else "pending",
               labels={"site": "berlin" if i % 2 else "paris", "tier": "edge"})
        for i in range(60)
    ]
    Device.objects.bulk_create(rows)
    return rows


def test_list_is_paginated_and_filtered(viewer_api, fleet_of_devices):
    page = viewer_api.get("/api/v1/devices/").json()
    assert page["count"] == 60 and len(page["results"]) == 50 and page["next"]
    pending = viewer_api.get("/api/v1/devices/?status=pending&page_size=100").json()
    assert pending["count"] == 20
    assert {d["status"] for d in pending["results"]} == {"pending"}
    berlin_active = viewer_api.get("/api/v1/devices/?label=site=berlin&status=active&page_size=100").json()
    assert berlin_active["count"] == len([d for d in fleet_of_devices if d.labels["site"] == "berlin" and d.status == "active"])
    two_labels = viewer_api.get("/api/v1/devices/?label=site=paris&label=tier=edge&page_size=100").json()
    assert two_labels["count"] == 30
    found = viewer_api.get("/api/v1/devices/?search=cam-05").json()
    assert {d["name"] for d in found["results"]} == {f"cam-05{i}" for i in range(10)}


def test_bad_filters_are_400(viewer_api):
    assert viewer_api.get("/api/v1/devices/?status=sleeping").status_code == 400
    bad_label = viewer_api.get("/api/v1/devices/?label=%3Dnokey")
    assert bad_label.status_code == 400 and "label" in bad_label.json()["detail"]


def test_list_query_count_does_not_grow_with_the_fleet(viewer_api, fleet_of_devices):
    viewer_api.get("/api/v1/devices/?page_size=1")  # first use of the token records last_used_at
    with CaptureQueriesContext(connection) as small:
        viewer_api.get("/api/v1/devices/?page_size=5")
    with CaptureQueriesContext(connection) as big:
        viewer_api.get("/api/v1/devices/?page_size=60")
    assert len(small) == len(big)


def test_update_labels_is_validated_and_audited(operator_api, active_device):
    device_id, _ = active_device
    ok = operator_api.patch(f"/api/v1/devices/{device_id}/", {"labels": {"site": "oslo", "rack": "7"}}, format="json")
    assert ok.status_code == 200 and ok.json()["labels"] == {"site": "oslo", "rack": "7"}
    event = AuditEvent.objects.filter(action="device.update").get()
    assert event.after["labels"] == {"site": "oslo", "rack": "7"} and event.actor == "otto-operator"

    bad = operator_api.patch(f"/api/v1/devices/{device_id}/", {"labels": {"bad key!": "x"}}, format="json")
    assert bad.status_code == 400 and "bad key!" in bad.json()["detail"]
    bad = operator_api.patch(f"/api/v1/devices/{device_id}/", {"labels": ["not", "a", "dict"]}, format="json")
    assert bad.status_code == 400
    assert Device.objects.get(pk=device_id).labels == {"site": "oslo", "rack": "7"}


def test_lifecycle_and_its_audit_trail(operator_api, admin_api, active_device):
    device_id, _ = active_device
    assert operator_api.post(f"/api/v1/devices/{device_id}/disable/").json()["status"] == "disabled"
    assert operator_api.post(f"/api/v1/devices/{device_id}/disable/").status_code == 409
    assert operator_api.post(f"/api/v1/devices/{device_id}/enable/").json()["status"] == "active"
    assert operator_api.post(f"/api/v1/devices/{device_id}/decommission/").json()["status"] == "decommissioned"
    trail = admin_api.get(f"/api/v1/audit/?object_id={device_id}").json()["results"]
    actions = [e["action"] for e in trail]
    assert actions[:3] == ["device.decommission", "device.enable", "device.disable"]
    assert trail[0]["before"]["status"] == "active" and trail[0]["after"]["status"] == "decommissioned"


def test_admin_manages_users_and_roles(admin_api, viewer):
    created = admin_api.post("/api/v1/users/", {"username": "olga", "role": "operator", "password": "a-long-password-1"}, format="json")
    assert created.status_code == 201 and created.json()["role"] == "operator"
    changed = admin_api.patch(f"/api/v1/users/{viewer.pk}/", {"role": "operator"}, format="json")
    assert changed.json()["role"] == "operator"
    assert AuditEvent.objects.filter(action="user.update", object_id=str(viewer.pk)).get().before["role"] == "viewer"


def test_an_admin_cannot_lock_themselves_out_through_the_api(admin_api, admin):
    """The same rule as the dashboard (fleet.services.update_user): neither a demotion nor a
    deactivation of one's own account, and nothing is changed or audited."""
    for body in ({"role": "viewer"}, {"is_active": False}, {"role": None}):
        resp = admin_api.patch(f"/api/v1/users/{admin.pk}/", body, format="json")
        assert resp.status_code == 403 and "yourself" in resp.json()["detail"], body
    admin.refresh_from_db()
    assert admin.is_active and admin.groups.filter(name="admin").exists()
    assert not AuditEvent.objects.filter(action="user.update", object_id=str(admin.pk)).exists()
    renamed = admin_api.patch(f"/api/v1/users/{admin.pk}/", {"email": "ada@example.com"}, format="json")
    assert renamed.status_code == 200 and renamed.json()["email"] == "ada@example.com"
    assert renamed.json()["role"] == "admin"


def test_api_token_created_once_then_usable(admin_api, operator):
    created = admin_api.post("/api/v1/api-tokens/", {"name": "ci-bot", "user": "otto-operator"}, format="json").json()
    from rest_framework.test import APIClient

    bot = APIClient()
    bot.credentials(HTTP_AUTHORIZATION=f"Token {created['token']}")
    assert bot.get("/api/v1/me/").json() == {"username": "otto-operator", "role": "operator"}
    admin_api.post(f"/api/v1/api-tokens/{created['id']}/revoke/")
    assert bot.get("/api/v1/me/").status_code == 401
