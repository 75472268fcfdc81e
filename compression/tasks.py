"""Celery tasks of the compression app: thin, they take ids and call services. Routed to the
``compress`` queue (settings.CELERY_TASK_ROUTES), where one worker process runs one job at a time
so benchmarks on a host never compete."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from compression import services, storage


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=3,
    default_retry_delay=15,
)
def run_job(self, job_id: str) -> str:
    """Run one compression job. Retried only when the database is briefly unavailable; engine
    errors are the job's result (status failed, with the reason), never a retry."""
    try:
        return services.run_job(job_id)
    except OperationalError as exc:
        if self.request.retries >= self.max_retries:
            services.fail_job(job_id, f"database unavailable after {self.max_retries} retries: {exc}")
            raise
        raise self.retry(exc=exc) from exc


@shared_task
def sweep_temporary_files(max_age_s: float = 6 * 3600) -> int:
    """Remove temporary upload and artifact files left by crashed processes."""
    return storage.sweep_temporary(max_age_s)


@shared_task
def collect_artifacts(grace_s: float = 24 * 3600) -> int:
    """Remove stored files nothing references any more (beat, daily); returns how many."""
    return len(services.collect_artifacts(grace_s=grace_s))
