"""Compression jobs: validated and created here (synchronously, so a bad request is a 400, not
a failed job), enqueued after commit, cancelled here. Running them lives in ``runner.py``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from compression.engine import EngineError, EngineOptions, list_recipes
from compression.engine.data import resolve_shape
from compression.engine.pipeline import CONSTRAINTS
from compression.engine.recipes import AUTO, parse_chain, split_chain_params
from compression.models import CompressionJob, Dataset, JobStatus, ModelVersion
from compression.services.registry import RegistryError, version_inputs
from compression.storage import path_of
from fleet import audit

TOLERANCE_KEYS = (
    "cosine_min", "top1_min", "accuracy_drop_max", "latency_slack",
    "distill_top1_min", "distill_relative_error_max",
)


class InvalidJob(RegistryError):
    """A job request the engine would refuse; the API answers 400 with the recipe list."""

    def __init__(self, message: str, **extra: Any):
        super().__init__(message, recipes=recipe_names(), **extra)


class InvalidState(RegistryError):
    status = 409


def recipe_names() -> list[str]:
    return [r["name"] for r in list_recipes()] + [AUTO]


def split_constraints(constraints: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's ``constraints`` hold both the tolerance (engine options) and the limits on the
    recommendation (engine constraints); split them, refusing unknown keys."""
    constraints = dict(constraints or {})
    unknown = sorted(set(constraints) - set(TOLERANCE_KEYS) - set(CONSTRAINTS))
    if unknown:
        raise InvalidJob(
            f"unknown constraint(s) {unknown}; known: {sorted((*TOLERANCE_KEYS, *CONSTRAINTS))}"
        )
    tolerance = {k: v for k, v in constraints.items() if k in TOLERANCE_KEYS and v is not None}
    limits = {k: v for k, v in constraints.items() if k in CONSTRAINTS and v is not None}
    return tolerance, limits


def engine_options(job: CompressionJob) -> dict[str, Any]:
    tolerance, _ = split_constraints(job.constraints)
    return {**job.options, **tolerance}


STUDENT_KEY = "student_version"


def _pop_student(params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Take ``student_version`` out of a job's params (flat, or nested under ``distill``)."""
    params = dict(params)
    ident = None
    nested = params.get("distill")
    if isinstance(nested, dict) and STUDENT_KEY in nested:
        nested = dict(nested)
        ident = nested.pop(STUDENT_KEY)
        params["distill"] = nested
    return params, params.pop(STUDENT_KEY, ident)


def _mentions_student_path(params: dict[str, Any]) -> bool:
    nested = params.get("distill")
    return "student_path" in params or (isinstance(nested, dict) and "student_path" in nested)


def engine_params(job: CompressionJob) -> dict[str, Any] | None:
    """The job's params as the engine takes them: an uploaded student named by its model version
    (``student_version``) becomes the path of that version's stored file (``student_path``).
    Clients never pass paths: which files on the server a job reads is ours to decide."""
    params, ident = _pop_student(job.params or {})
    if ident:
        student = ModelVersion.objects.get(pk=ident)
        params["student_path"] = str(path_of(student.file))
    return params or None


def _validate(
    version: ModelVersion,
    recipe: str,
    params: dict[str, Any],
    dataset: Dataset | None,
    constraints: dict[str, Any],
    input_shapes: dict[str, list[int]],
    options: dict[str, Any],
) -> None:
    try:
        steps = parse_chain(recipe)
        if recipe == AUTO and params:
            raise EngineError("auto chooses its own parameters; do not pass params with auto")
        if _mentions_student_path(params):
            raise EngineError(
                "student_path is not accepted here: upload the student architecture as a model "
                "version and pass its id as student_version"
            )
        params, student = _pop_student(params)
        if student is not None:
            if "distill" not in steps:
                raise EngineError("student_version only applies to recipes with a distill step")
            try:
                ModelVersion.objects.get(pk=student)
            except (ModelVersion.DoesNotExist, ValueError, ValidationError):
                raise EngineError(f"student_version {student!r} is not an uploaded model version") from None
        if recipe != AUTO:
            split_chain_params(steps, params)
        tolerance, limits = split_constraints(constraints)
        EngineOptions.from_dict({**options, **tolerance})
        for key, value in limits.items():
            if key == "size_metric":
                if value not in ("raw", "gzip"):
                    raise EngineError(f"constraint size_metric must be 'raw' or 'gzip', got {value!r}")
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise EngineError(f"constraint {key} must be a positive number, got {value!r}")
    except EngineError as exc:
        raise InvalidJob(str(exc)) from exc
    if dataset is not None and dataset.model_id != version.model_id:
        raise InvalidJob(f"dataset {dataset.id} belongs to another model")
    inputs = version_inputs(version)
    unknown = sorted(set(input_shapes) - {s.name for s in inputs})
    if unknown:
        raise InvalidJob(
            f"input_shapes names {unknown}, but the model's inputs are {[s.name for s in inputs]}"
        )
    if dataset is None:
        notes: list[str] = []
        for spec in inputs:
            try:
                resolve_shape(spec, input_shapes.get(spec.name), notes)
            except EngineError as exc:
                raise InvalidJob(str(exc).replace("--input-shape ", "input_shapes ")) from exc


def create_job(
    user,
    *,
    version: ModelVersion,
    recipe: str,
    params: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    constraints: dict[str, Any] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    options: dict[str, Any] | None = None,
    ip: str | None = None,
) -> CompressionJob:
    """Validate a compression request the way the engine will, create the job and enqueue it on
    the ``compress`` queue once the transaction commits (so the worker always finds the row)."""
    from compression import tasks

    recipe = (recipe or "").strip()
    params, constraints = dict(params or {}), dict(constraints or {})
    input_shapes, options = dict(input_shapes or {}), dict(options or {})
    _validate(version, recipe, params, dataset, constraints, input_shapes, options)
    with transaction.atomic():
        job = CompressionJob.objects.create(
            version=version,
            dataset=dataset,
            recipe=recipe,
            params=params,
            constraints=constraints,
            input_shapes=input_shapes,
            options=options,
            created_by=user if getattr(user, "pk", None) else None,
        )
        audit.record(
            user,
            "compression.job.create",
            job,
            after={
                "version": str(version.id),
                "recipe": recipe,
                "params": params,
                "dataset": str(dataset.id) if dataset else None,
                "constraints": constraints,
            },
            ip=ip,
        )
        job_id = str(job.id)
        transaction.on_commit(lambda: tasks.run_job.delay(job_id))
    return job


def cancel_job(user, job: CompressionJob, *, ip: str | None = None) -> CompressionJob:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops at the
    engine's next check (between steps and inside long recipes) and then reports cancelled."""
    with transaction.atomic():
        job = CompressionJob.objects.select_for_update().get(pk=job.pk)
        if not job.is_active:
            raise InvalidState(f"job is already {job.status}")
        before = {"status": job.status}
        job.cancel_requested = True
        fields = ["cancel_requested"]
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.CANCELLED
            job.finished_at = timezone.now()
            job.step = "cancelled before it started"
            fields += ["status", "finished_at", "step"]
        job.save(update_fields=fields)
        audit.record(
            user,
            "compression.job.cancel",
            job,
            before=before,
            after={"status": job.status, "cancel_requested": True},
            ip=ip,
        )
    return job
