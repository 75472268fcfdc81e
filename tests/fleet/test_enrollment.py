"""Enrollment and admission: how a device joins the fleet."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet.models import AuditEvent, Device, EnrollmentToken

pytestmark = pytest.mark.django_db


def test_auto_accept_token_admits_the_device_at_once(enrollment_token, enroll, device_client):
    token = enrollment_token(auto_accept=True, labels={"site": "berlin"})
    device_id, device_token, body = enroll(token, inventory={"hostname": "cam-01", "arch": "aarch64", "cpu_cores": 4})

    assert body["status"] == "active"
    assert body["config"]["telemetry_interval_s"] == 10
    assert device_token.startswith("efd_")
    device = Device.objects.get(pk=device_id)
    assert device.labels == {"site": "berlin"}
    assert device.arch == "aarch64" and device.cpu_cores == 4
    resp = device_client(device_token).put("/api/v1/agent/inventory", {"hostname": "cam-01b"}, format="json")
    assert resp.status_code == 200 and resp.json() == {"changed": True}
    assert AuditEvent.objects.filter(action="device.auto_accept", object_id=device_id).exists()


def test_pending_device_is_refused_until_an_operator_accepts_it(
    enrollment_token, enroll, device_client, operator_api
):
    device_id, device_token, body = enroll(enrollment_token())
    assert body["status"] == "pending"
    agent = device_client(device_token)

    refused = agent.put("/api/v1/agent/inventory", {"hostname": "x"}, format="json")
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": "device is pending approval by an operator", "status": "pending", "code": "device_not_active",
    }

    accepted = operator_api.post(f"/api/v1/devices/{device_id}/accept/")
    assert accepted.status_code == 200 and accepted.json()["status"] == "active"
    assert agent.put("/api/v1/agent/inventory", {"hostname": "x"}, format="json").status_code == 200
    event = AuditEvent.objects.get(action="device.accept")
    assert event.actor == "otto-operator"
    assert event.before["status"] == "pending" and event.after["status"] == "active"


def test_rejected_device_loses_its_token(enrollment_token, enroll, device_client, operator_api):
    device_id, device_token, _ = enroll(enrollment_token())
    resp = operator_api.post(f"/api/v1/devices/{device_id}/reject/")
    assert resp.status_code == 200 and resp.json()["status"] == "rejected"

    after = device_client(device_token).put("/api/v1/agent/inventory", {}, format="json")
    assert after.status_code == 401
    assert "revoked" in after.json()["detail"]
    # Accepting a rejected device is not a valid transition.
    again = operator_api.post(f"/api/v1/devices/{device_id}/accept/")
    assert again.status_code == 409 and "rejected" in again.json()["detail"]


def test_disabled_device_gets_a_clear_403(active_device, operator_api):
    device_id, agent = active_device
    operator_api.post(f"/api/v1/devices/{device_id}/disable/")
    resp = agent.put("/api/v1/agent/inventory", {}, format="json")
    assert resp.status_code == 403
    assert resp.json()["status"] == "disabled"


def test_expired_token_is_refused_with_401(enrollment_token, enroll):
    token = enrollment_token(expires_at=timezone.now() - timedelta(minutes=1))
    _, _, body = enroll(token, expect=401)
    assert body["detail"].startswith("enrollment token expired at")
    assert not Device.objects.exists()


def test_used_up_token_is_refused_with_401(enrollment_token, enroll):
    token = enrollment_token(max_uses=1, auto_accept=True)
    enroll(token, name="a", fingerprint="fp-a")
    _, _, body = enroll(token, name="b", fingerprint="fp-b", expect=401)
    assert body["detail"] == "enrollment token has been used up (1 of 1 uses)"
    assert Device.objects.count() == 1


@pytest.mark.parametrize("wrong", ["efe_not-a-real-token", "", "x" * 150])
def test_wrong_token_is_refused_with_a_clear_message(enroll, wrong, db):
    from rest_framework.test import APIClient

    resp = APIClient().post(
        "/api/v1/agent/enroll",
        {"enrollment_token": wrong, "name": "n", "fingerprint": "f"},
        format="json",
    )
    if wrong == "":
        assert resp.status_code == 400
        assert "enrollment_token" in resp.json()["detail"]
    else:
        assert resp.status_code == 401
        assert resp.json()["detail"] == "enrollment token is not valid"
    assert not Device.objects.exists()


def test_revoked_token_is_refused(enrollment_token, enroll, operator_api):
    token = enrollment_token()
    token_id = EnrollmentToken.objects.get().pk
    assert operator_api.post(f"/api/v1/enrollment-tokens/{token_id}/revoke/").status_code == 200
    _, _, body = enroll(token, expect=401)
    assert body["detail"] == "enrollment token has been revoked"


def test_replayed_enrollment_finds_the_same_device(enrollment_token, enroll, device_client):
    token = enrollment_token(auto_accept=True, max_uses=1)
    first_id, first_token, _ = enroll(token)
    again_id, again_token, body = enroll(token)  # the agent lost our first answer and retried

    assert again_id == first_id
    assert body["reenrolled"] is True
    assert Device.objects.count() == 1
    assert EnrollmentToken.objects.get().uses == 1
    # Only the newest credential works.
    assert device_client(first_token).put("/api/v1/agent/inventory", {}, format="json").status_code == 401
    assert device_client(again_token).put("/api/v1/agent/inventory", {}, format="json").status_code == 200


def test_preprovisioned_device_is_admitted_even_with_a_manual_token(
    enrollment_token, enroll, operator_api
):
    resp = operator_api.post(
        "/api/v1/devices/", {"name": "line-3-pc", "fingerprint": "fp-line-3", "labels": {"line": "3"}},
        format="json",
    )
    assert resp.status_code == 201, resp.content
    device_id, _, body = enroll(enrollment_token(auto_accept=False), name="whatever", fingerprint="fp-line-3")
    assert device_id == resp.json()["id"]
    assert body["status"] == "active"
    device = Device.objects.get(pk=device_id)
    assert device.name == "line-3-pc" and device.labels["line"] == "3"


def test_enroll_body_is_validated(db):
    from rest_framework.test import APIClient

    resp = APIClient().post("/api/v1/agent/enroll", {"enrollment_token": "efe_x"}, format="json")
    assert resp.status_code == 400
    assert "name" in resp.json()["errors"] and "fingerprint" in resp.json()["errors"]


def test_agent_can_rotate_its_token(active_device, device_client):
    _, agent = active_device
    new_token = agent.post("/api/v1/agent/rotate-token").json()["device_token"]
    assert agent.put("/api/v1/agent/inventory", {}, format="json").status_code == 401
    assert device_client(new_token).put("/api/v1/agent/inventory", {}, format="json").status_code == 200
