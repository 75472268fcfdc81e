"""Operators' deployment API: viewers read, operators act; preview; lifecycle actions; audit;
per-device history."""

from __future__ import annotations

import pytest

from fleet import rollouts
from fleet.models import AuditEvent, Deployment, DeviceAssignment, HealthCheck

from .deploy_helpers import add_variant, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("artifact_root")]


@pytest.fixture
def setup():
    model, version = make_model()
    small = add_variant(version, "int8_dynamic", size_bytes=50 * 1024**2, p50=2.0)
    big = add_variant(version, "original", size_bytes=500 * 1024**2, p50=1.0)
    roomy = make_device("roomy", labels={"site": "berlin"}, disk=10 * 1024**3)
    cramped = make_device("cramped", labels={"site": "berlin"}, disk=300 * 1024**2)
    make_device("paris", labels={"site": "paris"})
    return {"model": model, "version": version, "small": small, "big": big, "roomy": roomy, "cramped": cramped}


BODY = {"model": "digits", "target_kind": "labels", "target_labels": {"site": "berlin"},
        "phases": [1, "100%"], "soak_seconds": 0, "error_threshold": "10%"}


def test_preview_shows_matching_devices_and_the_variant_each_would_get(setup, viewer_api, operator_api):
    resp = operator_api.post("/api/v1/deployments/preview/", BODY, format="json")
    assert resp.status_code == 200, resp.content
    rows = {r["device"]: r for r in resp.json()["devices"]}
    assert set(rows) == {"roomy", "cramped"}
    assert rows["roomy"]["variant_id"] == str(setup["big"].pk)  # fits and is faster
    assert rows["cramped"]["variant_id"] == str(setup["small"].pk)
    assert "fastest" in rows["cramped"]["reason"]
    assert str(setup["big"].pk) in rows["cramped"]["detail"]["rejected"]
    assert resp.json()["phase_sizes"] == [1, 2]
    assert viewer_api.post("/api/v1/deployments/preview/", BODY, format="json").status_code == 403


def test_operator_creates_starts_pauses_resumes_and_rolls_back(setup, operator_api, viewer_api):
    created = operator_api.post("/api/v1/deployments/", BODY, format="json")
    assert created.status_code == 201, created.content
    dep_id = created.json()["id"]
    assert created.json()["state"] == "draft"
    assert operator_api.patch(f"/api/v1/deployments/{dep_id}/", {"name": "canary"}, format="json").status_code == 200

    assert viewer_api.post(f"/api/v1/deployments/{dep_id}/start/").status_code == 403
    started = operator_api.post(f"/api/v1/deployments/{dep_id}/start/")
    assert started.status_code == 200 and started.json()["state"] == "active"
    # The health check is built by a Celery task before the first phase is released.
    assert started.json()["state_reason"].startswith("preparing")
    assert not DeviceAssignment.objects.filter(deployment_id=dep_id, current=True).exists()
    assert rollouts.prepare(dep_id) == "prepared: 1 released"  # what the task does
    assert viewer_api.get(f"/api/v1/deployments/{dep_id}/").json()["state_reason"] == ""
    assert operator_api.patch(f"/api/v1/deployments/{dep_id}/", {"name": "x"}, format="json").status_code == 409
    assert operator_api.delete(f"/api/v1/deployments/{dep_id}/").status_code == 409

    assert operator_api.post(f"/api/v1/deployments/{dep_id}/pause/", {"reason": "lunch"},
                             format="json").json()["state"] == "paused"
    assert operator_api.post(f"/api/v1/deployments/{dep_id}/pause/").status_code == 409
    assert operator_api.post(f"/api/v1/deployments/{dep_id}/resume/").json()["state"] == "active"

    devices = viewer_api.get(f"/api/v1/deployments/{dep_id}/devices/")
    assert devices.status_code == 200 and len(devices.json()) == 2
    assert any(row["reason"] for row in devices.json())

    detail = viewer_api.get(f"/api/v1/deployments/{dep_id}/").json()
    assert sum(detail["counts"].values()) == 2

    rolled = operator_api.post(f"/api/v1/deployments/{dep_id}/abort/", {"rollback": True}, format="json")
    assert rolled.json()["state"] == "rolled_back"
    actions = list(AuditEvent.objects.filter(object_id=dep_id).values_list("action", flat=True))
    assert {"deployment.create", "deployment.update", "deployment.start", "deployment.pause",
            "deployment.resume", "deployment.rollback"} <= set(actions)


def test_validation_of_phases_threshold_and_pinning(setup, operator_api):
    bad = operator_api.post("/api/v1/deployments/", {**BODY, "phases": ["150%"]}, format="json")
    assert bad.status_code == 400 and "phases" in bad.json()["errors"]
    bad = operator_api.post("/api/v1/deployments/", {**BODY, "error_threshold": "lots"}, format="json")
    assert bad.status_code == 400
    bad = operator_api.post("/api/v1/deployments/", {**BODY, "variant_policy": "pinned"}, format="json")
    assert bad.status_code == 400 and "pinned_variant" in bad.json()["errors"]
    ok = operator_api.post("/api/v1/deployments/", {**BODY, "variant_policy": "pinned",
                                                     "pinned_variant": str(setup["small"].pk)}, format="json")
    assert ok.status_code == 201, ok.content


def test_device_deployment_history(setup, operator_api, viewer_api):
    dep = operator_api.post("/api/v1/deployments/", BODY, format="json").json()
    operator_api.post(f"/api/v1/deployments/{dep['id']}/start/")
    resp = viewer_api.get(f"/api/v1/devices/{setup['roomy'].pk}/deployments/")
    assert resp.status_code == 200
    [row] = resp.json()["results"]
    assert row["deployment"] == dep["id"] and row["model"] == "digits"
    assert "reports" in resp.json()
    assert Deployment.objects.count() == 1


def test_deployments_list_is_readable_by_viewers_only_when_signed_in(setup, viewer_api, anonymous_api):
    assert viewer_api.get("/api/v1/deployments/").status_code == 200
    assert anonymous_api.get("/api/v1/deployments/").status_code == 401


def test_start_queues_the_health_check_task_after_commit(setup, operator_api, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    from fleet import deploy_tasks

    queued = []
    monkeypatch.setattr(deploy_tasks.prepare_deployment, "delay", lambda pk: queued.append(pk))
    dep = operator_api.post("/api/v1/deployments/", BODY, format="json").json()
    with django_capture_on_commit_callbacks(execute=True):
        operator_api.post(f"/api/v1/deployments/{dep['id']}/start/")
    assert queued == [dep["id"]]
    assert not HealthCheck.objects.exists()  # not built in the request
    assert deploy_tasks.prepare_deployment.run(dep["id"]) == "prepared: 1 released"
    assert HealthCheck.objects.get(version=setup["version"]).samples > 0


def test_a_draft_for_chosen_devices_is_edited_and_deleted_with_audit(setup, operator_api, operator):
    body = {**BODY, "target_kind": "devices", "target_labels": {}, "target_devices": [str(setup["roomy"].pk)]}
    created = operator_api.post("/api/v1/deployments/", body, format="json")
    assert created.status_code == 201, created.content
    dep = Deployment.objects.get(pk=created.json()["id"])
    assert dep.created_by == operator and list(dep.target_devices.all()) == [setup["roomy"]]

    moved = operator_api.patch(f"/api/v1/deployments/{dep.pk}/",
                               {"target_devices": [str(setup["cramped"].pk)], "soak_seconds": 60}, format="json")
    assert moved.status_code == 200 and moved.json()["target_devices"] == [str(setup["cramped"].pk)]
    dep.refresh_from_db()
    assert dep.soak_seconds == 60 and list(dep.target_devices.all()) == [setup["cramped"]]
    update = AuditEvent.objects.get(action="deployment.update", object_id=str(dep.pk))
    assert update.before["soak_seconds"] == 0 and update.after["soak_seconds"] == 60

    assert operator_api.delete(f"/api/v1/deployments/{dep.pk}/").status_code == 204
    assert not Deployment.objects.filter(pk=dep.pk).exists()
    assert AuditEvent.objects.filter(action="deployment.delete", object_id=str(dep.pk)).exists()
