"""Celery tasks of deployments: thin wrappers over fleet.rollouts, run by beat."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="fleet.deployments.advance")
def advance_rollouts() -> dict:
    """Advance every active rollout one step (gate, soak, next phase, auto-pause)."""
    from fleet import rollouts

    return rollouts.advance_all()


@shared_task(name="fleet.deployments.reevaluate")
def reevaluate_placements() -> int:
    """Re-place devices of live ``auto`` deployments whose resources or measurements changed."""
    from fleet import rollouts

    return rollouts.reevaluate_all()


@shared_task(name="fleet.deployments.prepare")
def prepare_deployment(deployment_id: str) -> str:
    """Build the health check of a just-started deployment and release its first phase (queued
    by ``rollouts.start(..., health_check="async")``, i.e. by the API's start action)."""
    from fleet import rollouts

    return rollouts.prepare(deployment_id)
