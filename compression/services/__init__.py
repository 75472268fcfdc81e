"""Multi-object work of the compression app, shared by the API, the dashboard, the tasks and the
management commands: the registry (models, versions, datasets), jobs, and running a job."""

from compression.services.jobs import InvalidJob, InvalidState, cancel_job, create_job, recipe_names
from compression.services.registry import (
    ORIGINAL,
    Conflict,
    RegistryError,
    TooLarge,
    add_dataset,
    add_version,
    collect_artifacts,
    create_model,
    too_large_message,
    upload_limit,
)
from compression.services.runner import fail_job, run_job

__all__ = [
    "ORIGINAL",
    "Conflict",
    "InvalidJob",
    "InvalidState",
    "RegistryError",
    "TooLarge",
    "add_dataset",
    "add_version",
    "collect_artifacts",
    "cancel_job",
    "create_job",
    "create_model",
    "fail_job",
    "recipe_names",
    "run_job",
    "too_large_message",
    "upload_limit",
]
