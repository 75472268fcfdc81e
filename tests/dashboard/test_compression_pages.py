"""Models, versions, jobs and variants pages, and the size/latency scatter plot."""

from __future__ import annotations

import pytest

from compression.models import AIModel, CompressionJob, ModelVersion, Variant
from fleet.views.charts import Point, pareto_front, variant_scatter_svg

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(db):
    model = AIModel.objects.create(name="digits-mlp")
    version = ModelVersion.objects.create(
        model=model, version=1, sha256="a" * 64, size_bytes=400_000, file="models/aa/x.onnx",
        metadata={"opset": 17, "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 64]}],
                  "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 10]}],
                  "op_histogram": {"MatMul": 3, "Add": 3, "Relu": 2}})
    job = CompressionJob.objects.create(version=version, recipe="auto", status="succeeded", progress=100,
                                        log="step 1\nstep 2", report={"baseline": {"latency_ms": {"p50": 1.0}}})
    specs = [("int8-dynamic", 110_000, 0.6, 0.9995, "accepted", True), ("fp16", 200_000, 0.9, 0.99999, "accepted", False),
             ("int4-weight", 70_000, 1.4, 0.97, "rejected", False), ("prune-magnitude", 400_000, 1.0, 0.999, "accepted", False)]
    for recipe, size, p50, cos, status, rec in specs:
        Variant.objects.create(job=job, source=version, recipe=recipe, status=status, size_bytes=size,
                               latency_ms={"p50": p50}, fidelity={"cosine_min": cos}, recommended=rec,
                               reason="" if status == "accepted" else "cosine 0.97 below 0.99")
    return job


def test_pareto_front_and_svg():
    pts = [Point("a", "a", 100, 5, 0.999, "accepted"), Point("b", "b", 200, 2, 0.999, "accepted"),
           Point("c", "c", 300, 3, 0.999, "accepted"), Point("d", "d", 50, 1, 0.5, "rejected")]
    assert [p.id for p in pareto_front(pts)] == ["a", "b"]
    pts[1].recommended = True
    svg = str(variant_scatter_svg(pts))
    assert svg.startswith("<svg") and svg.count('class="pt"') == 4
    assert 'data-testid="pareto-frontier"' in svg and 'data-testid="recommended-marker"' in svg
    assert "<script" not in svg
    # Labels are escaped.
    assert "&lt;b&gt;" in str(variant_scatter_svg([Point("x", "<b>", 10, 1, 1.0, "accepted")]))


def test_job_page_variants_table_and_chart(viewer_client, job):
    body = viewer_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'data-testid="variant-table"' in body and "cosine 0.97 below 0.99" in body
    assert 'data-testid="variant-scatter"' in body and 'data-testid="recommended-marker"' in body
    assert "original" in body  # the baseline diamond
    assert 'hx-trigger="every 2s"' not in body  # finished jobs stop polling


def test_running_job_polls_and_fragment(viewer_client, job):
    CompressionJob.objects.filter(pk=job.pk).update(status="running", progress=42, step="int8-dynamic")
    body = viewer_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in body and "42 %" in body
    frag = viewer_client.get(f"/jobs/{job.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert frag.lstrip().startswith('<div id="job-live"') and "<html" not in frag


def test_models_version_pages(viewer_client, operator_client, job):
    assert "digits-mlp" in viewer_client.get("/models/").content.decode()
    body = viewer_client.get(f"/models/{job.version.model.pk}/").content.decode()
    assert "v1" in body and 'data-testid="upload-form"' not in body  # viewer: no upload
    body = operator_client.get(f"/models/{job.version.model.pk}/").content.decode()
    assert f'data-upload="/api/v1/models/{job.version.model.pk}/versions/"' in body
    body = viewer_client.get(f"/versions/{job.version.pk}/").content.decode()
    assert "MatMul" in body and "<code>x</code>" in body
    variant = Variant.objects.get(recipe="int4-weight")
    assert "cosine 0.97" in viewer_client.get(f"/variants/{variant.pk}/").content.decode()


def test_model_create_roles_and_errors(viewer_client, operator_client):
    assert viewer_client.post("/models/new/", {"name": "m"}).status_code == 403
    resp = operator_client.post("/models/new/", {"name": "Not a slug!"})
    assert resp.status_code == 400
    resp = operator_client.post("/models/new/", {"name": "detector"})
    assert resp.status_code == 302 and AIModel.objects.filter(name="detector").exists()
    resp = operator_client.post("/models/new/", {"name": "detector"})
    assert resp.status_code == 400 and "exists already" in resp.content.decode()


def test_job_form_lists_recipes_and_refuses_bad_input(operator_client, viewer_client, job):
    body = operator_client.get(f"/jobs/new/?version={job.version.pk}").content.decode()
    assert "int8-static" in body and "auto" in body and "calibrated on your data" in body
    resp = operator_client.post("/jobs/new/", {"version": str(job.version.pk), "recipe": "auto",
                                               "input_shapes": "x=1,a"})
    assert resp.status_code == 400 and "positive dims" in resp.content.decode()
    assert viewer_client.post("/jobs/new/", {"version": str(job.version.pk), "recipe": "auto"}).status_code == 403
    assert viewer_client.post(f"/jobs/{job.pk}/cancel/").status_code == 403
