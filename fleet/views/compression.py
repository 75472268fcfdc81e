"""Model registry and compression pages: models, versions with their metadata, datasets, jobs
with live progress, and the variants of a job on a table and a size/latency chart.

Uploads and job creation go through the compression app's API and services."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from compression.engine.recipes import explain, list_recipes
from compression.models import AIModel, CompressionJob, Dataset, JobStatus, ModelVersion, Variant
from compression.services import cancel_job, create_job, create_model
from fleet.forms import CompressionJobForm, ModelCreateForm
from fleet.roles import OPERATOR, has_role

from ._base import client_ip, forbidden, page_or_fragment, require_role
from .charts import Point, variant_scatter_svg


def recipes() -> list[dict]:
    """[{name, summary}] including ``auto`` first."""
    items = [{"name": "auto", "summary": explain("auto")}]
    items += [{"name": r["name"], "summary": r["summary"]} for r in list_recipes()]
    return items


# --- Models -------------------------------------------------------------------------------------


@login_required
def model_list(request):
    models = (AIModel.objects.annotate(
        n_versions=Count("versions", distinct=True), n_datasets=Count("datasets", distinct=True))
        .order_by("name"))
    return render(request, "compression/models.html", {"models": models, "form": ModelCreateForm()})


@require_role(OPERATOR)
def model_create(request):
    form = ModelCreateForm(request.POST)
    if not form.is_valid():
        models = AIModel.objects.annotate(n_versions=Count("versions", distinct=True),
                                          n_datasets=Count("datasets", distinct=True))
        return render(request, "compression/models.html", {"models": models, "form": form}, status=400)
    if AIModel.objects.filter(name=form.cleaned_data["name"]).exists():
        form.add_error("name", "A model with this name exists already; upload a new version to it instead.")
        return render(request, "compression/models.html", {"models": AIModel.objects.all(), "form": form},
                      status=400)
    model = create_model(request.user, name=form.cleaned_data["name"],
                         description=form.cleaned_data["description"], ip=client_ip(request))
    messages.success(request, f"Model {model.name} created; upload its first ONNX version below.")
    return redirect("dashboard:model", pk=model.pk)


@login_required
def model_detail(request, pk):
    model = get_object_or_404(AIModel, pk=pk)
    versions = (ModelVersion.objects.filter(model=model)
                .annotate(n_variants=Count("variants", filter=Q(variants__status="accepted")),
                          n_jobs=Count("jobs", distinct=True))
                .select_related("created_by").order_by("-version"))
    datasets = Dataset.objects.filter(model=model).order_by("-created_at")
    return render(request, "compression/model_detail.html", {
        "model": model, "versions": versions, "datasets": datasets,
        "upload_url": reverse("aimodel-versions", args=[model.pk]),
        "dataset_upload_url": reverse("aimodel-datasets", args=[model.pk]),
    })


@login_required
def version_detail(request, pk):
    version = get_object_or_404(ModelVersion.objects.select_related("model", "created_by"), pk=pk)
    meta = version.metadata or {}
    ops = meta.get("op_histogram") or meta.get("operators") or meta.get("ops") or {}
    if isinstance(ops, list):  # [[op, n], ...] or [{"op":..,"count":..}]
        ops = {(o[0] if isinstance(o, list | tuple) else o.get("op")): (o[1] if isinstance(o, list | tuple) else o.get("count"))
               for o in ops}
    ops_sorted = sorted(ops.items(), key=lambda kv: -kv[1]) if isinstance(ops, dict) else []
    top = ops_sorted[0][1] if ops_sorted else 1
    jobs = version.jobs.order_by("-created_at")[:20]
    return render(request, "compression/version_detail.html", {
        "version": version, "meta": meta, "ops": [(k, v, 100 * v / top) for k, v in ops_sorted],
        "inputs": meta.get("inputs") or [], "outputs": meta.get("outputs") or [], "jobs": jobs,
        "extra_meta": {k.replace("_", " "): (", ".join(map(str, v)) if isinstance(v, list) else v)
                       for k, v in meta.items()
                       if k in ("opset", "ir_version", "producer", "producer_version", "parameter_count",
                                "control_flow_ops", "subgraph_count", "external_data", "format", "notes")
                       and v not in (None, "", [])},
        "verification": meta.get("original_verification") or {},
    })


# --- Jobs ---------------------------------------------------------------------------------------


@login_required
def job_list(request):
    qs = CompressionJob.objects.select_related("version__model", "dataset").order_by("-created_at")
    status = request.GET.get("status", "")
    if status in JobStatus.values:
        qs = qs.filter(status=status)
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    active = any(j.is_active for j in page)
    return page_or_fragment(request, "compression/jobs.html", "compression/partials/job_table.html", {
        "page": page, "statuses": JobStatus.choices, "status": status, "active": active,
    })


def _job_form(data=None, initial=None):
    versions = ModelVersion.objects.select_related("model").order_by("model__name", "-version")
    datasets = Dataset.objects.select_related("model").order_by("-created_at")
    return CompressionJobForm(
        data, initial=initial,
        versions=[(str(v.pk), str(v)) for v in versions],
        recipes=[(r["name"], r["name"]) for r in recipes()],
        datasets=[(str(d.pk), f"{d.model.name}: {d}") for d in datasets],
    )


@login_required
def job_new(request):
    if not has_role(request.user, OPERATOR):
        return forbidden(request, OPERATOR)
    if request.method == "POST":
        form = _job_form(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            version = ModelVersion.objects.get(pk=data["version"])
            dataset = Dataset.objects.filter(pk=data["dataset"]).first() if data["dataset"] else None
            if dataset is not None and dataset.model_id != version.model_id:
                form.add_error("dataset", f"Dataset {dataset.name} belongs to another model.")
            else:
                try:
                    job = create_job(request.user, version=version, recipe=data["recipe"], dataset=dataset,
                                     constraints=form.constraints(), input_shapes=data["input_shapes"],
                                     ip=client_ip(request))
                except Exception as exc:  # the service's validation errors, shown on the form
                    messages_ = getattr(exc, "messages", None) or [str(exc)]
                    form.add_error(None, "; ".join(str(m) for m in messages_))
                else:
                    messages.success(request, f"Job queued: {job.recipe} on {version}.")
                    return redirect("dashboard:job", pk=job.pk)
        status = 400
    else:
        form = _job_form(initial={"version": request.GET.get("version", ""), "recipe": "auto"})
        status = 200
    return render(request, "compression/job_new.html", {"form": form, "recipes": recipes()}, status=status)


def _points(job: CompressionJob, variants) -> list[Point]:
    pts = []
    for v in variants:
        lat = (v.latency_ms or {}).get("p50")
        fid = (v.fidelity or {}).get("cosine_min")
        pts.append(Point(id=str(v.pk), label=v.recipe, size=v.size_bytes or 0, latency=lat or 0,
                         fidelity=fid, status=v.status, pareto=v.pareto,
                         recommended=v.recommended or v.pk == job.recommended_id))
    baseline = ((job.report or {}).get("baseline") or {}).get("latency_ms", {}).get("p50")
    if baseline is None:
        baseline = next(((v.baseline_latency_ms or {}).get("p50") for v in variants if v.baseline_latency_ms), None)
    if baseline:
        pts.append(Point(id="original", label="original", size=job.version.size_bytes, latency=baseline,
                         fidelity=1.0, status="original", original=True))
    return pts


def job_context(job: CompressionJob) -> dict:
    variants = list(job.variants.order_by("size_bytes", "recipe"))
    for v in variants:
        v.download_url = reverse("variant-download", args=[v.pk]) if v.file else None
    return {
        "job": job, "variants": variants,
        "scatter": variant_scatter_svg(_points(job, variants)) if variants else None,
        "baseline": ((job.report or {}).get("baseline") or {}).get("latency_ms") or {},
        "log_tail": "\n".join((job.log or "").splitlines()[-300:]),
    }


@login_required
def job_detail(request, pk):
    job = get_object_or_404(CompressionJob.objects.select_related("version__model", "dataset", "created_by"), pk=pk)
    return page_or_fragment(request, "compression/job_detail.html", "compression/partials/job_live.html",
                            job_context(job))


@require_role(OPERATOR)
def job_cancel(request, pk):
    job = get_object_or_404(CompressionJob, pk=pk)
    if not job.is_active:
        messages.error(request, f"The job is {job.status}; only queued or running jobs can be cancelled.")
    else:
        try:
            cancel_job(request.user, job, ip=client_ip(request))
            messages.success(request, "Cancellation requested; the worker stops at the next step.")
        except Exception as exc:  # InvalidState: it finished meanwhile
            messages.error(request, f"Not cancelled: {exc}")
    return redirect("dashboard:job", pk=job.pk)


@login_required
def variant_detail(request, pk):
    variant = get_object_or_404(Variant.objects.select_related("source__model", "job"), pk=pk)
    return render(request, "compression/variant_detail.html", {
        "v": variant,
        "download": reverse("variant-download", args=[variant.pk]),
    })
