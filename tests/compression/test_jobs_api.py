"""Compression jobs through the API: validation, authorization, cancel, running the task (twice,
as a redelivery would), and a real Celery worker end to end."""

from __future__ import annotations

import hashlib
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from compression import services, signing, storage
from compression.models import CompressionJob, JobStatus, Variant
from fleet.models import AuditEvent
from tests.compression.conftest import FAST, upload, upload_dataset
from tests.compression.engine.models import digits_data

pytestmark = pytest.mark.django_db


def _job(client, version_id, **body):
    return client.post("/api/v1/jobs/", {"version": version_id, **body}, format="json")


@pytest.fixture
def no_enqueue(monkeypatch):
    """Record enqueued job ids instead of sending them to the broker."""
    sent = []
    monkeypatch.setattr("compression.tasks.run_job.delay", lambda job_id: sent.append(job_id))
    return sent


@pytest.mark.parametrize(
    "body, message",
    [
        ({"recipe": "int9-magic"}, "unknown recipe 'int9-magic'; known recipes: "),
        ({"recipe": "int8-dynamic", "params": {"bits": 3}}, "unknown parameter(s) ['bits']"),
        ({"recipe": "auto", "params": {"per_channel": True}}, "auto chooses its own parameters"),
        ({"recipe": "int8-dynamic", "constraints": {"speed": 1}}, "unknown constraint(s) ['speed']"),
        ({"recipe": "int8-dynamic", "options": {"turbo": True}}, "unknown engine option(s)"),
        ({"recipe": "int8-dynamic", "input_shapes": {"y": [1, 64]}}, "input_shapes names ['y']"),
        ({"recipe": "int8-dynamic", "input_shapes": {"x": [1, 63]}}, "fixes it to 64"),
    ],
)
def test_job_validation(operator_api, mlp_version, no_enqueue, body, message):
    resp = _job(operator_api, mlp_version["id"], **body)
    assert resp.status_code == 400, resp.content
    assert message in resp.json()["detail"]
    assert "int8-dynamic" in resp.json()["recipes"] and "auto" in resp.json()["recipes"]
    assert CompressionJob.objects.count() == 0 and no_enqueue == []


def test_unresolvable_symbolic_dims_need_input_shapes(operator_api, registered, model_files,
                                                      no_enqueue):
    version = upload(operator_api, "digits", model_files["dynamic"]).json()
    resp = _job(operator_api, version["id"], recipe="fp16")
    assert resp.status_code == 400 and "input_shapes x=1,1" in resp.json()["detail"]
    ok = _job(operator_api, version["id"], recipe="fp16", input_shapes={"x": [1, 8]})
    assert ok.status_code == 201, ok.content


def test_create_enqueues_after_commit_and_audits(operator_api, mlp_version, no_enqueue,
                                                 django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        resp = _job(operator_api, mlp_version["id"], recipe="prune-magnitude+int8-dynamic",
                    params={"prune-magnitude": {"sparsity": 0.5}}, options=FAST)
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["status"] == "queued" and body["variants"] == []
    assert no_enqueue == [body["id"]]
    assert AuditEvent.objects.filter(action="compression.job.create", object_id=body["id"]).exists()


def test_job_list_filters_and_query_count(viewer_api, operator_api, mlp_version, no_enqueue):
    for recipe in ("int8-dynamic", "fp16", "auto"):
        assert _job(operator_api, mlp_version["id"], recipe=recipe).status_code == 201
    CompressionJob.objects.filter(recipe="fp16").update(status=JobStatus.FAILED)
    with CaptureQueriesContext(connection) as queries:
        page = viewer_api.get("/api/v1/jobs/?model=digits").json()
    assert page["count"] == 3 and len(queries) <= 6
    assert viewer_api.get("/api/v1/jobs/?status=failed").json()["count"] == 1
    assert viewer_api.get("/api/v1/jobs/?model=other").json()["count"] == 0


def test_cancel_queued_job(operator_api, mlp_version, no_enqueue):
    job = _job(operator_api, mlp_version["id"], recipe="int8-dynamic").json()
    resp = operator_api.post(f"/api/v1/jobs/{job['id']}/cancel/")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert operator_api.post(f"/api/v1/jobs/{job['id']}/cancel/").status_code == 409
    # A delivery that arrives afterwards does nothing.
    assert services.run_job(job["id"]) == "skipped"
    assert Variant.objects.filter(job_id=job["id"]).count() == 0
    assert AuditEvent.objects.filter(action="compression.job.cancel").count() == 1


def test_cancel_while_running(operator_api, mlp_version, no_enqueue, monkeypatch):
    job = _job(operator_api, mlp_version["id"], recipe="int8-dynamic", options=FAST).json()

    from compression.services import runner

    real = runner.compress

    def compress_then_cancel(*args, **kwargs):
        # The operator presses cancel while the engine runs.
        CompressionJob.objects.filter(pk=job["id"]).update(cancel_requested=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "compress", compress_then_cancel)
    monkeypatch.setattr(runner, "FLUSH_EVERY_S", 0.0)
    assert services.run_job(job["id"]) == "cancelled"
    done = CompressionJob.objects.get(pk=job["id"])
    assert done.status == "cancelled" and "cancelled" in done.log
    assert Variant.objects.filter(job=done).count() == 0
    assert storage.temporary_entries() == []


@pytest.mark.parametrize("persona", ["viewer_api", "anonymous_api"])
def test_viewers_and_anonymous_cannot_write(request, persona, mlp_version, model_files, no_enqueue):
    client = request.getfixturevalue(persona)
    expected = 403 if persona == "viewer_api" else 401
    assert client.post("/api/v1/models/", {"name": "x"}).status_code == expected
    assert upload(client, "digits", model_files["mlp"]).status_code == expected
    assert _job(client, mlp_version["id"], recipe="int8-dynamic").status_code == expected
    variant = mlp_version["original_variant"]["id"]
    assert client.get(f"/api/v1/variants/{variant}/download/").status_code == expected
    if persona == "viewer_api":  # viewers read everything else
        assert client.get(f"/api/v1/variants/{variant}/").status_code == 200
        assert client.get("/api/v1/jobs/").status_code == 200
        assert client.get("/api/v1/recipes/").status_code == 200


def test_device_token_is_refused(active_device, mlp_version):
    _, device = active_device
    for method, path in [("get", "/api/v1/models/"), ("get", "/api/v1/jobs/"),
                         ("post", "/api/v1/jobs/"), ("get", "/api/v1/variants/")]:
        resp = getattr(device, method)(path, {}, format="json")
        assert resp.status_code == 403, (path, resp.content)


def test_run_twice_is_idempotent(operator_api, mlp_version, model_files, no_enqueue):
    """A second delivery of a finished job does nothing; a redelivery after a worker died
    mid-run (status still running, work files left behind) starts clean: no duplicate variants
    and no temporary files."""
    _, X_test, _, y_test = digits_data()
    dataset = upload_dataset(operator_api, "digits",
                             {"x": X_test[:200, None, :], "labels": y_test[:200]}).json()
    job = _job(operator_api, mlp_version["id"], recipe="int8-dynamic", dataset=dataset["id"],
               options=FAST).json()

    # A first attempt that "died": marked running, a half-written file in its work directory.
    CompressionJob.objects.filter(pk=job["id"]).update(status=JobStatus.RUNNING, attempts=1)
    leftover = storage.work_dir(job["id"], 1) / "half-written.onnx"
    leftover.write_bytes(b"\x08\x01partial")

    assert services.run_job(job["id"]) == "succeeded"
    done = CompressionJob.objects.get(pk=job["id"])
    assert done.attempts == 2 and "attempt 2" in done.log
    first = list(Variant.objects.filter(job=done).values_list("sha256", "status"))
    assert len(first) == 1 and first[0][1] == "accepted"
    assert not leftover.exists() and storage.temporary_entries() == []

    # Duplicate delivery after success: skipped, nothing changes.
    assert services.run_job(job["id"]) == "skipped"
    assert list(Variant.objects.filter(job=done).values_list("sha256", "status")) == first

    # Forced re-run of the same job (as if the success had not been recorded): still one set.
    CompressionJob.objects.filter(pk=job["id"]).update(status=JobStatus.RUNNING)
    assert services.run_job(job["id"]) == "succeeded"
    assert Variant.objects.filter(job=done).count() == 1
    variant = Variant.objects.get(job=done)
    assert variant.lineage["dataset_sha256"] == dataset["sha256"]
    assert variant.fidelity["synthetic"] is False and variant.fidelity["accuracy"] is not None
    assert storage.path_of(variant.file).is_file() and storage.temporary_entries() == []


def test_engine_error_fails_the_job_without_retry(operator_api, mlp_version, no_enqueue):
    job = _job(operator_api, mlp_version["id"], recipe="int8-dynamic").json()
    CompressionJob.objects.filter(pk=job["id"]).update(options={"threads": 0})
    assert services.run_job(job["id"]) == "failed"
    failed = CompressionJob.objects.get(pk=job["id"])
    assert failed.status == "failed" and "threads must be at least 1" in failed.error


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_real_worker_end_to_end(celery_worker_process, api_client_for, make_user, model_files):
    operator_api = api_client_for(make_user("wendy-worker-op", "operator"))
    assert operator_api.post("/api/v1/models/", {"name": "digits-e2e"}).status_code == 201
    version = upload(operator_api, "digits-e2e", model_files["mlp"])
    assert version.status_code == 201, version.content
    _, X_test, _, y_test = digits_data()
    dataset = upload_dataset(operator_api, "digits-e2e",
                             {"x": X_test[:, None, :], "labels": y_test}).json()
    job = _job(operator_api, version.json()["id"], recipe="int8-dynamic", dataset=dataset["id"],
               options=FAST).json()

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        detail = operator_api.get(f"/api/v1/jobs/{job['id']}/").json()
        if detail["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    else:
        log = celery_worker_process["log"].read_text()[-3000:]
        pytest.fail(f"job did not finish: {detail['status']} {detail['step']}\n{log}")

    assert detail["status"] == "succeeded", (detail["error"], detail["log"])
    assert detail["progress"] == 100 and detail["log"].strip()
    assert detail["report"]["recommended"] == 0, (detail["report"]["reason"], detail["variants"])
    (variant,) = detail["variants"]
    assert variant["status"] == "accepted" and variant["deployable"] and variant["recommended"]
    assert variant["size_bytes"] < version.json()["size_bytes"]
    assert variant["fidelity"]["cosine_min"] >= 0.99 and variant["fidelity"]["synthetic"] is False
    assert variant["lineage"]["recipe"] == "int8-dynamic" and variant["lineage"]["onnxruntime"]
    assert detail["recommended"] == variant["id"]

    key = operator_api.get("/api/v1/agent/signing-key").json()
    assert signing.verify(variant["sha256"], variant["signature"], key["public_key_raw_b64"])
    download = operator_api.get(variant["download_url"])
    assert download.status_code == 200
    body = b"".join(download.streaming_content)
    assert hashlib.sha256(body).hexdigest() == variant["sha256"]
    assert download["X-EdgeFleet-Signature"] == variant["signature"]
    assert variant["lineage"]["dataset_sha256"] == dataset["sha256"]
    assert storage.temporary_entries() == []
