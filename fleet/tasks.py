"""Celery tasks of the fleet app: thin wrappers that take ids and call services."""

from __future__ import annotations

import socket

from celery import shared_task


@shared_task(name="fleet.ping")
def ping(value: str) -> dict:
    """A round trip through the broker: proves a worker is consuming (used by health checks)."""
    return {"pong": value, "worker": socket.gethostname()}


# Telemetry's beat tasks live with their services; importing them here registers them.
from fleet.telemetry import tasks as telemetry_tasks  # noqa: E402, F401
