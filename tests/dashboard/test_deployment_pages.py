"""The dashboard's deployment form saves through ``fleet.rollouts.create`` (as the API does):
the draft, its chosen devices, its author and its audit record, or nothing and a 400."""

from __future__ import annotations

import pytest

from fleet.models import AuditEvent, Deployment
from tests.fleet.deploy_helpers import add_variant, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("artifact_root")]


@pytest.fixture
def fleet():
    model, version = make_model()
    add_variant(version, p50=1.0)
    return model, [make_device(f"cam-{i}") for i in range(3)]


def form(model, devices, **extra) -> dict:
    return {"name": "cams", "model": model.pk, "target_kind": "devices",
            "target_devices": [str(d.pk) for d in devices], "variant_policy": "auto", "phases": "1, 100%",
            "success_share": "1", "soak_seconds": "0", "error_threshold": "0", "draft": "1", **extra}


def test_operator_saves_a_draft_for_chosen_devices(fleet, operator_client, operator):
    model, devices = fleet
    resp = operator_client.post("/deployments/new/", form(model, devices[:2]))
    assert resp.status_code == 302, resp.content.decode()[:2000]
    dep = Deployment.objects.get()
    assert resp["Location"] == f"/deployments/{dep.pk}/"
    assert dep.state == "draft" and dep.created_by == operator and dep.phases == [1, "100%"]
    assert set(dep.target_devices.all()) == set(devices[:2])
    event = AuditEvent.objects.get(action="deployment.create", object_id=str(dep.pk))
    assert event.actor_user == operator and event.after["name"] == "cams"


def test_an_explicit_target_without_devices_saves_nothing(fleet, operator_client):
    model, _ = fleet
    resp = operator_client.post("/deployments/new/", form(model, []))
    assert resp.status_code == 400 and "Choose at least one device" in resp.content.decode()
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action="deployment.create").exists()


def test_viewer_cannot_create(fleet, viewer_client):
    model, devices = fleet
    assert viewer_client.post("/deployments/new/", form(model, devices)).status_code == 403
    assert not Deployment.objects.exists()
