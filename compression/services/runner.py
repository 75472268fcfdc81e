"""Running one compression job on a worker: the body of ``compression.tasks.run_job``.

Delivery is at-least-once (acks late, reject on worker lost): a worker killed mid-job gets the
job delivered again. So a run
- claims the job under a row lock and bumps ``attempts``; that number fences the attempt: an
  older attempt still alive (a redelivery after a visibility timeout) can no longer write
  progress or store variants;
- removes whatever earlier attempts left in ``variants/.work/<job>/``;
- lets the engine write only inside its own work directory; finished artifacts are moved into
  content-addressed storage (atomic renames), and the variant rows, the report and the final
  status are written in one transaction, so a crash leaves either everything or nothing;
- does nothing for a job that already finished (a duplicate delivery).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from django.db import DatabaseError, OperationalError, transaction
from django.utils import timezone

from compression import signing, storage
from compression.engine import Cancelled, CompressionReport, EngineError, VariantReport, compress
from compression.models import CompressionJob, JobStatus, Variant, VariantStatus
from compression.services.jobs import engine_options, engine_params, split_constraints
from compression.services.registry import estimate_peak_memory

logger = logging.getLogger(__name__)
FLUSH_EVERY_S = 0.5
LOG_LIMIT = 200_000


class _Fenced(Exception):
    """A newer attempt of this job has taken over; this one stops quietly."""


class _Progress:
    """Engine callbacks that write progress, the current step and the log to the job row at
    most every ``FLUSH_EVERY_S`` seconds, and read ``cancel_requested`` at the same pace."""

    def __init__(self, job: CompressionJob, attempt: int):
        self.job_id, self.attempt = job.pk, attempt
        self.lines: list[str] = [job.log] if job.log else []
        self.fraction, self.step = 0.0, ""
        self.last_flush = 0.0
        self.cancel = False
        self.fenced = False

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {message}")
        self.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.fraction = min(max(float(fraction), self.fraction), 1.0)
        if message != self.step:
            self.step = message
            self.lines.append(f"{timezone.now().strftime('%H:%M:%S')} {message}")
        self.flush(force=fraction >= 1.0)

    def cancelled(self) -> bool:
        self.flush()
        return self.cancel or self.fenced

    def text(self) -> str:
        text = "\n".join(self.lines)
        return text if len(text) <= LOG_LIMIT else "…\n" + text[-LOG_LIMIT:]

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_EVERY_S:
            return
        self.last_flush = now
        try:
            rows = CompressionJob.objects.filter(pk=self.job_id, attempts=self.attempt).update(
                progress=round(self.fraction * 100, 1), step=self.step[:200], log=self.text()
            )
            if rows == 0:
                self.fenced = True
                return
            self.cancel = bool(
                CompressionJob.objects.filter(pk=self.job_id)
                .values_list("cancel_requested", flat=True)
                .first()
            )
        except DatabaseError:
            # Progress is best effort: a busy database must not fail the recipe that is running.
            logger.warning("could not record progress of job %s", self.job_id, exc_info=True)


def _claim(job_id: str) -> tuple[CompressionJob, int] | None:
    """Mark the job running under a row lock and return it with this attempt's number, or None
    when there is nothing to do (finished, cancelled, or deleted)."""
    with transaction.atomic():
        job = CompressionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return None
        if job.cancel_requested:
            job.status, job.finished_at = JobStatus.CANCELLED, timezone.now()
            job.save(update_fields=["status", "finished_at"])
            return None
        job.attempts += 1
        retry_note = (
            f"attempt {job.attempts}: the previous attempt stopped before finishing "
            "(worker restarted or killed); starting again"
            if job.attempts > 1
            else ""
        )
        job.status = JobStatus.RUNNING
        job.started_at = timezone.now()
        job.progress, job.step, job.error = 0.0, "starting", ""
        if retry_note:
            job.log = (job.log + "\n" if job.log else "") + retry_note
        # Rows a previous attempt may have written are replaced by this attempt's.
        Variant.objects.filter(job=job).delete()
        job.report, job.recommended = None, None
        job.save()
        return job, job.attempts


def fail_job(job_id: str, reason: str) -> bool:
    """Mark a running job failed from outside its attempt (the task gave up retrying)."""
    return bool(CompressionJob.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(
        status=JobStatus.FAILED, step="failed", error=reason, finished_at=timezone.now()))


def _finish(job_id: str, attempt: int, **fields: Any) -> bool:
    fields.setdefault("finished_at", timezone.now())
    return bool(
        CompressionJob.objects.filter(pk=job_id, attempts=attempt).update(**fields)
    )


def run_job(job_id: str) -> str:
    """Run a job end to end; returns its final status (or 'skipped')."""
    claimed = _claim(job_id)
    if claimed is None:
        return "skipped"
    job, attempt = claimed
    storage.clear_work(str(job.pk), keep_attempt=attempt)
    out_dir = storage.work_dir(str(job.pk), attempt)
    tracker = _Progress(job, attempt)
    _, limits = split_constraints(job.constraints)
    try:
        report = compress(
            storage.path_of(job.version.file),
            job.recipe,
            dataset=storage.path_of(job.dataset.file) if job.dataset else None,
            input_shapes=job.input_shapes or None,
            out_dir=out_dir,
            options=engine_options(job),
            constraints=limits,
            params=engine_params(job),
            progress=tracker.progress,
            log=tracker.log,
            cancelled=tracker.cancelled,
        )
        if tracker.fenced:
            raise _Fenced()
        tracker.progress(1.0, "storing variants")
        _store(job, attempt, report, tracker)
        return JobStatus.SUCCEEDED
    except _Fenced:
        logger.info("job %s attempt %s superseded by a newer attempt", job_id, attempt)
        return "superseded"
    except Cancelled:
        if tracker.fenced:
            return "superseded"
        tracker.log("cancelled by an operator")
        _finish(job_id, attempt, status=JobStatus.CANCELLED, step="cancelled", log=tracker.text())
        return JobStatus.CANCELLED
    except EngineError as exc:
        tracker.log(f"error: {exc}")
        _finish(job_id, attempt, status=JobStatus.FAILED, error=str(exc), step="failed",
                log=tracker.text())
        return JobStatus.FAILED
    except OperationalError:
        raise  # the task retries transient database errors; the next attempt starts clean
    except DatabaseError as exc:  # not transient (integrity, data): a retry would fail the same way
        tracker.log(traceback.format_exc())
        _finish(job_id, attempt, status=JobStatus.FAILED, step="failed",
                error=f"database error: {type(exc).__name__}: {exc}", log=tracker.text())
        logger.exception("compression job %s failed on the database", job_id)
        return JobStatus.FAILED
    except Exception as exc:
        tracker.log(traceback.format_exc())
        _finish(job_id, attempt, status=JobStatus.FAILED, step="failed",
                error=f"internal error: {type(exc).__name__}: {exc}", log=tracker.text())
        logger.exception("compression job %s failed", job_id)
        return JobStatus.FAILED
    finally:
        storage.remove_work(str(job.pk), attempt)


def _adopt(path: Path, sha256: str | None) -> storage.Stored:
    """Move an engine artifact into storage. Two variants with identical bytes share one file
    in the engine's output directory, so the second may already have been moved."""
    if not path.exists() and sha256:
        relpath = storage.address("variants", sha256, ".onnx")
        if storage.touch(relpath):  # marked as just placed, so storage.collect leaves it alone
            return storage.Stored(relpath, sha256, storage.path_of(relpath).stat().st_size)
    return storage.adopt("variants", path, ".onnx")


def _lineage(job: CompressionJob, report: CompressionReport, v: VariantReport) -> dict[str, Any]:
    host = report.lineage
    return {
        "source_version": str(job.version_id),
        "source_sha256": job.version.sha256,
        "job": str(job.pk),
        "recipe": v.recipe,
        "params": v.params,
        "requested_params": v.requested_params,
        "dataset_sha256": report.dataset.get("sha256"),
        "synthetic_data": bool(report.dataset.get("synthetic")),
        "onnx": host.get("onnx"),
        "onnxruntime": host.get("onnxruntime"),
        "cpu_flags": host.get("cpu_flags"),
        "cpu_model": host.get("cpu_model"),
        "threads": host.get("threads"),
        "seconds": v.elapsed_s,
        "notes": v.notes,
        "extra": v.extra,
    }


def _store(job: CompressionJob, attempt: int, report: CompressionReport, tracker) -> None:
    """Move accepted artifacts into storage, sign them, and write every variant row, the
    report and the final status in one transaction (fenced by the attempt number)."""
    synthetic = bool(report.dataset.get("synthetic"))
    rows: list[tuple[int, Variant]] = []
    for index, v in enumerate(report.variants):
        stored = None
        if v.status == VariantStatus.ACCEPTED and v.path:
            stored = _adopt(Path(v.path), v.sha256)
        fidelity = dict(v.fidelity)
        fidelity["synthetic"] = synthetic
        row = Variant(
            job=job,
            source=job.version,
            recipe=v.recipe,
            params=v.params,
            status=v.status,
            reason=v.reason,
            sha256=stored.sha256 if stored else (v.sha256 or ""),
            size_bytes=v.size_bytes,
            gzip_bytes=v.gzip_bytes,
            file=stored.relpath if stored else "",
            signature=signing.sign(stored.sha256) if stored else "",
            latency_ms=v.latency_ms or {},
            baseline_latency_ms=v.baseline_latency_ms or {},
            fidelity=fidelity,
            peak_memory_bytes=estimate_peak_memory(v.size_bytes) if v.size_bytes else None,
            execution_providers=["CPUExecutionProvider"],
            pareto=v.pareto,
            recommended=report.recommended == index,
            lineage=_lineage(job, report, v),
        )
        rows.append((index, row))
    document = report.to_dict()
    document["model"]["path"] = job.version.file
    with transaction.atomic():
        locked = CompressionJob.objects.select_for_update().filter(pk=job.pk).first()
        if locked is None or locked.attempts != attempt:
            raise _Fenced()
        Variant.objects.filter(job=job).delete()
        recommended = None
        for index, row in rows:
            row.save()
            document["variants"][index]["path"] = row.file or None
            document["variants"][index]["variant_id"] = str(row.id)
            if row.recommended:
                recommended = row
        tracker.log(f"done: {report.reason}")
        CompressionJob.objects.filter(pk=job.pk).update(
            status=JobStatus.SUCCEEDED,
            progress=100.0,
            step="done",
            report=document,
            recommended=recommended,
            finished_at=timezone.now(),
            log=tracker.text(),
        )
