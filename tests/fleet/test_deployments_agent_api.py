"""Agent protocol v1 for deployments: desired state with ETag/304 (cheap), artifacts with HTTP
Range and per-device authorization, idempotent reports that feed the auto policy."""

from __future__ import annotations

import hashlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from compression import signing, storage
from fleet import healthchecks, rollouts, services
from fleet.models import (
    AssignmentState,
    Deployment,
    DeploymentReport,
    Device,
    DeviceStatus,
    VariantBenchmark,
)

from .deploy_helpers import add_variant, agent_client, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("artifact_root")]


@pytest.fixture
def deployed():
    """Two devices labelled site=berlin with the digits model assigned; one outsider."""
    model, version = make_model()
    variant = add_variant(version)
    cams = [make_device(f"cam-{i}", labels={"site": "berlin"}) for i in range(2)]
    outsider = make_device("gw-elsewhere", labels={"site": "paris"})
    d = Deployment.objects.create(model=model, target_kind="labels", target_labels={"site": "berlin"},
                                  phases=["100%"], soak_seconds=0)
    d = rollouts.start(None, d)
    return {"deployment": d, "variant": variant, "version": version, "cams": cams, "outsider": outsider}


def test_desired_state_lists_the_assigned_variant_with_everything_to_install_it(deployed):
    cam, variant = deployed["cams"][0], deployed["variant"]
    resp = agent_client(cam).get("/api/v1/agent/desired-state")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["signing_key_id"] == signing.key_id()
    [entry] = doc["models"]
    assert entry["model"] == "digits" and entry["state"] == "assigned"
    v = entry["variant"]
    assert v["variant_id"] == str(variant.pk) and v["sha256"] == variant.sha256
    assert v["size_bytes"] == variant.size_bytes and v["signature"] == variant.signature
    assert signing.verify(v["sha256"], v["signature"], signing.public_key())
    assert v["download_url"] == f"/api/v1/agent/artifacts/{variant.pk}"
    check = v["health_check"]
    inputs, outputs = healthchecks.unpack(check["inputs"]), healthchecks.unpack(check["outputs"])
    assert inputs["x"].shape[0] == check["samples"] == outputs["logits"].shape[0]
    assert 0.9 <= check["min_cosine"] < 1


def test_unchanged_desired_state_is_a_304_with_one_query(deployed):
    client = agent_client(deployed["cams"][0])
    first = client.get("/api/v1/agent/desired-state")
    etag = first["ETag"]
    with CaptureQueriesContext(connection) as ctx:
        again = client.get("/api/v1/agent/desired-state", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag and not again.content
    # The token check and the generation counter come back from one statement.
    assert len(ctx.captured_queries) == 1, [q["sql"] for q in ctx.captured_queries]

    # A change to the device's assignments moves the ETag on.
    rollouts.roll_back(None, deployed["deployment"])
    changed = client.get("/api/v1/agent/desired-state", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["models"][0]["variant"] is None


def test_an_etag_does_not_outlive_the_token_or_the_device_status(deployed):
    """The one-statement check still refuses a revoked token and a disabled device, even when the
    poll carries the right ETag (a 304 must not leak past authorization)."""
    device = deployed["cams"][0]
    client = agent_client(device)
    etag = client.get("/api/v1/agent/desired-state")["ETag"]
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.DISABLED)
    refused = client.get("/api/v1/agent/desired-state", HTTP_IF_NONE_MATCH=etag)
    assert refused.status_code == 403 and "disabled" in refused.json()["detail"]
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.ACTIVE)
    assert client.get("/api/v1/agent/desired-state", HTTP_IF_NONE_MATCH=etag).status_code == 304
    services.revoke_device_credentials(None, device)
    gone = client.get("/api/v1/agent/desired-state", HTTP_IF_NONE_MATCH=etag)
    assert gone.status_code == 401 and "revoked" in gone.json()["detail"]


def test_a_device_without_deployments_gets_an_empty_state(deployed):
    resp = agent_client(deployed["outsider"]).get("/api/v1/agent/desired-state")
    assert resp.status_code == 200 and resp.json()["models"] == []


def test_operators_and_anonymous_cannot_read_desired_state(deployed, operator_api, anonymous_api):
    assert operator_api.get("/api/v1/agent/desired-state").status_code in (401, 403)
    assert anonymous_api.get("/api/v1/agent/desired-state").status_code == 401


def test_artifact_download_whole_and_by_range(deployed):
    variant = deployed["variant"]
    data = storage.path_of(variant.file).read_bytes()
    client = agent_client(deployed["cams"][0])
    url = f"/api/v1/agent/artifacts/{variant.pk}"

    whole = client.get(url)
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"
    body = b"".join(whole.streaming_content)
    assert hashlib.sha256(body).hexdigest() == variant.sha256
    assert whole["ETag"] == f'"{variant.sha256}"'

    part = client.get(url, HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert b"".join(part.streaming_content) == data[100:200]

    tail = client.get(url, HTTP_RANGE="bytes=1000-")
    assert tail.status_code == 206 and b"".join(tail.streaming_content) == data[1000:]
    suffix = client.get(url, HTTP_RANGE="bytes=-10")
    assert b"".join(suffix.streaming_content) == data[-10:]

    bad = client.get(url, HTTP_RANGE=f"bytes={len(data)}-")
    assert bad.status_code == 416 and bad["Content-Range"] == f"bytes */{len(data)}"
    assert client.get(url, HTTP_RANGE="bytes=50-10").status_code == 416

    # If-Range with another artifact's tag: the whole file, not a piece of this one.
    other = client.get(url, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"deadbeef"')
    assert other.status_code == 200


def test_artifacts_not_assigned_to_the_device_are_refused(deployed):
    variant = deployed["variant"]
    outsider = agent_client(deployed["outsider"])
    assert outsider.get(f"/api/v1/agent/artifacts/{variant.pk}").status_code == 403
    unknown = "00000000-0000-4000-8000-000000000000"
    assert outsider.get(f"/api/v1/agent/artifacts/{unknown}").status_code == 404
    other_version_variant = add_variant(deployed["version"], "int8_dynamic")
    cam = agent_client(deployed["cams"][0])
    assert cam.get(f"/api/v1/agent/artifacts/{other_version_variant.pk}").status_code == 403


def test_reports_move_the_assignment_and_are_idempotent(deployed):
    cam, variant = deployed["cams"][0], deployed["variant"]
    client = agent_client(cam)
    body = {"report_id": "r-1", "model": "digits", "variant_id": str(variant.pk), "state": "downloading",
            "progress": 42.0}
    first = client.post("/api/v1/agent/reports", body, format="json")
    assert first.status_code == 200, first.content
    assert first.json()["results"][0] == {"report_id": "r-1", "accepted": True, "duplicate": False,
                                          "state": "downloading"}
    replay = client.post("/api/v1/agent/reports", body, format="json")
    assert replay.json()["results"][0]["duplicate"] is True

    batch = {"reports": [
        {"report_id": "r-2", "model": "digits", "variant_id": str(variant.pk), "state": "verifying"},
        {"report_id": "r-3", "model": "digits", "variant_id": str(variant.pk), "state": "installed",
         "benchmark": {"p50_ms": 0.8, "p95_ms": 1.1, "peak_rss_bytes": 50_000_000}},
    ]}
    assert client.post("/api/v1/agent/reports", batch, format="json").status_code == 200
    a = deployed["deployment"].assignments.get(device=cam)
    assert a.state == AssignmentState.INSTALLED and a.benchmark_p95_ms == 1.1
    bench = VariantBenchmark.objects.get(variant=variant, device=cam)
    assert (bench.cpu_model, bench.arch, bench.p50_ms) == (cam.cpu_model, cam.arch, 0.8)
    assert a.reports.count() == 3


def test_a_batch_is_applied_once_even_when_replayed_or_repeated_inside(deployed):
    cam, variant = deployed["cams"][1], deployed["variant"]
    client = agent_client(cam)
    steps = [{"report_id": f"b-{s}", "model": "digits", "variant_id": str(variant.pk), "state": s}
             for s in ("downloading", "verifying", "checking")]
    installed = {"report_id": "b-installed", "model": "digits", "variant_id": str(variant.pk),
                 "state": "installed", "benchmark": {"p50_ms": 1.5}}
    batch = {"reports": [*steps, steps[0], installed, {"report_id": "b-x", "model": "nope", "state": "failed"}]}
    with CaptureQueriesContext(connection) as ctx:
        first = client.post("/api/v1/agent/reports", batch, format="json")
    assert first.status_code == 200, first.content
    results = first.json()["results"]
    assert [r["state"] for r in results] == ["downloading", "verifying", "checking", None, "installed", None]
    assert [r["duplicate"] for r in results] == [False, False, False, True, False, False]
    assert [r["accepted"] for r in results] == [True, True, True, False, True, False]
    # One lock, one duplicate check, one insert, one save for the batch (not per report).
    inserts = [q for q in ctx.captured_queries if q["sql"].startswith('INSERT INTO "fleet_deploymentreport"')]
    assert len(inserts) == 1
    a = deployed["deployment"].assignments.get(device=cam)
    assert a.state == AssignmentState.INSTALLED and a.benchmark_p50_ms == 1.5
    assert a.reports.count() == 4

    replay = client.post("/api/v1/agent/reports", batch, format="json").json()["results"]
    assert all(r["duplicate"] for r in replay)
    assert DeploymentReport.objects.filter(device=cam).count() == 5  # 4 accepted + the unmatched one


def test_reports_about_other_variants_are_kept_but_not_applied(deployed):
    cam = deployed["cams"][0]
    other = add_variant(deployed["version"], "fp16")
    resp = agent_client(cam).post("/api/v1/agent/reports", {"model": "digits", "variant_id": str(other.pk),
                                                            "state": "installed"}, format="json")
    assert resp.json()["results"][0]["accepted"] is False
    assert deployed["deployment"].assignments.get(device=cam).state == AssignmentState.ASSIGNED


def test_malformed_reports_are_400(deployed):
    client = agent_client(deployed["cams"][0])
    assert client.post("/api/v1/agent/reports", {"model": "digits", "state": "exploded"},
                       format="json").status_code == 400


def test_class_latency_is_the_median_of_the_latest_measurements(deployed):
    """Placement reads the latest CLASS_SAMPLE measurements of a variant on a device class (a
    bounded read per install), so an old slow cohort stops counting once newer devices report."""
    from datetime import timedelta

    from django.utils import timezone

    from fleet import placement_data

    variant = deployed["variant"]
    n = placement_data.CLASS_SAMPLE
    now = timezone.now()
    old = [make_device(f"old-{i}") for i in range(n // 2)]
    new = [make_device(f"new-{i}") for i in range(n)]
    VariantBenchmark.objects.bulk_create(
        [VariantBenchmark(variant=variant, device=d, cpu_model=d.cpu_model, arch=d.arch, p50_ms=50.0,
                          measured_at=now - timedelta(days=1)) for d in old]
        + [VariantBenchmark(variant=variant, device=d, cpu_model=d.cpu_model, arch=d.arch, p50_ms=2.0 + i % 3,
                            measured_at=now - timedelta(seconds=i)) for i, d in enumerate(new)])
    cam = deployed["cams"][0]
    latencies = placement_data.class_latencies([variant.pk], cam.cpu_model, cam.arch)
    assert latencies == {str(variant.pk): 3.0}  # the old 50 ms cohort is outside the window
    assert placement_data.class_latencies([variant.pk], "Other CPU", cam.arch) == {}
