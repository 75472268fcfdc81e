"""What a device should run (its desired state), the artifacts it may download, and the progress
reports it sends back.

Cost: 10,000 devices polling every 30 s is about 330 requests/s. The ETag is a counter per
device (:class:`~fleet.models.DesiredStateVersion`), bumped by every change to the device's
current assignments, so an unchanged poll costs one query (the token check joined with the
counter: ``fleet.api.agent_deployments.DesiredStateAuthentication``) and is answered 304. Only a
changed state builds the document (three queries).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from fleet.timeutil import to_utc

from .models import (
    AssignmentState,
    DeploymentReport,
    DesiredStateVersion,
    DeviceAssignment,
    HealthCheck,
    VariantBenchmark,
)
from .models.deployments import IN_PROGRESS

REPORT_STATES = ("downloading", "verifying", "checking", "installed", "failed", "rolled_back", "removed")


# --- versions and ETags -------------------------------------------------------------------------


def bump(device_ids: Iterable) -> None:
    """The desired state of these devices changed: move their ETag on."""
    ids = list({str(i) for i in device_ids})
    if not ids:
        return
    updated = {str(i) for i in DesiredStateVersion.objects.filter(device_id__in=ids)
                  .values_list("device_id", flat=True)}
    DesiredStateVersion.objects.filter(device_id__in=ids).update(generation=F("generation") + 1,
                                                                  updated_at=timezone.now())
    missing = [DesiredStateVersion(device_id=uuid.UUID(i), generation=1) for i in ids if i not in updated]
    if missing:
        DesiredStateVersion.objects.bulk_create(missing, ignore_conflicts=True)


def etag(device, gen: int) -> str:
    return f'"ds-{device.pk.hex}-{gen}"'


# --- the document -------------------------------------------------------------------------------


def min_cosine_for(variant) -> float:
    """Tolerance of the on-device check: a little below the fidelity the variant was verified
    with, so a correct variant passes and a broken or mismatched one does not."""
    cosine = (variant.fidelity or {}).get("cosine_min")
    if isinstance(cosine, int | float):
        return round(max(0.9, min(0.999, float(cosine) - 0.005)), 6)
    return 0.99


def _variant_entry(variant, health: HealthCheck | None) -> dict:
    entry = {
        "variant_id": str(variant.pk),
        "recipe": variant.recipe,
        "version": variant.source.version,
        "sha256": variant.sha256,
        "size_bytes": variant.size_bytes,
        "signature": variant.signature,
        "download_url": f"/api/v1/agent/artifacts/{variant.pk}",
        "health_check": None,
    }
    if health is not None and health.samples:
        entry["health_check"] = {
            "format": "npz-base64", "inputs": health.inputs_npz, "outputs": health.outputs_npz,
            "samples": health.samples, "min_cosine": min_cosine_for(variant),
        }
    return entry


def document(device, gen: int) -> dict:
    """The device's desired state: one entry per model. ``variant`` is null when the device
    should run nothing for that model (a rollback to nothing); models not listed are not managed
    by any deployment and the agent removes them."""
    from compression import signing

    rows = list(DeviceAssignment.objects.filter(device_id=device.pk, current=True)
                .select_related("model", "variant__source", "previous_variant__source", "deployment"))
    version_ids = {v.source_id for a in rows for v in (a.variant, a.previous_variant) if v is not None}
    checks = {h.version_id: h for h in HealthCheck.objects.filter(version_id__in=version_ids)}
    models = []
    for a in sorted(rows, key=lambda r: r.model.name):
        target_id = a.target_variant_id
        target = None if target_id is None else (a.variant if target_id == a.variant_id else a.previous_variant)
        models.append({
            "model": a.model.name,
            "deployment_id": str(a.deployment_id),
            "assignment_id": str(a.pk),
            "state": a.state,
            "variant": _variant_entry(target, checks.get(target.source_id)) if target else None,
        })
    return {"generation": gen, "signing_key_id": signing.key_id(), "models": models}


# --- artifacts ----------------------------------------------------------------------------------


def may_download(device, variant_id) -> bool:
    """A device may fetch the variant its current assignments name, and their rollback targets."""
    return DeviceAssignment.objects.filter(device_id=device.pk, current=True).filter(
        Q(variant_id=variant_id) | Q(previous_variant_id=variant_id)).exists()


# --- reports ------------------------------------------------------------------------------------


def _parse_ts(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = parse_datetime(value)
        return to_utc(ts) if ts is not None else None
    except ValueError:
        return None  # malformed or out of range: the report's time falls back to "now"


def apply_report(device, report: dict, *, now: datetime | None = None) -> dict:
    """Record one progress report (idempotent on ``report_id``) and move the matching
    assignment on. Returns ``{"report_id", "accepted", "duplicate", "state"}``."""
    return apply_reports(device, [report], now=now)[0]


def apply_reports(device, reports: list[dict], *, now: datetime | None = None) -> list[dict]:
    """Record a device's batch of reports (an agent sends the steps of an install together) in one
    transaction: the device's assignments for the models named are locked once, replays
    (``report_id`` seen before, or twice in the batch) are answered as duplicates without being
    applied again, the new reports are inserted together and each touched assignment is saved
    once. Returns one result per report, in order (see :func:`apply_report`).

    A concurrent replay of the same batch that slips past the duplicate check (possible only for
    reports no assignment matches: those lock nothing) fails the insert; the batch is then applied
    report by report, each in its own savepoint."""
    now = now or timezone.now()
    items = [(str(r.get("report_id") or uuid.uuid4().hex)[:64], r) for r in reports]
    try:
        with transaction.atomic():
            return _apply_batch(device, items, now)
    except IntegrityError:
        return [_apply_one(device, report_id, r, now) for report_id, r in items]


def _apply_batch(device, items: list[tuple[str, dict]], now: datetime) -> list[dict]:
    names = {str(r.get("model", "")) for _, r in items}
    # of=("self",): lock this device's assignments only, not the model row every device
    # shares (that serialised all reports of a rollout on PostgreSQL).
    assignments = {a.model.name: a for a in DeviceAssignment.objects.select_for_update(of=("self",))
                   .select_related("model").filter(device_id=device.pk, current=True, model__name__in=names)}
    seen = set(DeploymentReport.objects.filter(device_id=device.pk, report_id__in=[i for i, _ in items])
               .values_list("report_id", flat=True))
    results, rows, touched = [], [], {}
    for report_id, r in items:
        if report_id in seen:
            results.append({"report_id": report_id, "accepted": False, "duplicate": True, "state": None})
            continue
        seen.add(report_id)
        a = assignments.get(str(r.get("model", "")))
        accepted = a is not None and _matches(a, r.get("variant_id"))
        row = _report_row(device, a if accepted else None, report_id, r)
        rows.append(row)
        state = None
        if accepted:
            touched.setdefault(a.pk, (a, a.state))
            state = _transition(a, row, r.get("benchmark") or {}, device, now)
        results.append({"report_id": report_id, "accepted": accepted, "duplicate": False, "state": state})
    DeploymentReport.objects.bulk_create(rows)
    for a, before in touched.values():
        _finish(a, before, device)
    return results


def _apply_one(device, report_id: str, r: dict, now: datetime) -> dict:
    try:
        with transaction.atomic():
            a = (DeviceAssignment.objects.select_for_update(of=("self",)).select_related("model")
                 .filter(device_id=device.pk, current=True, model__name=r.get("model", "")).first())
            accepted = a is not None and _matches(a, r.get("variant_id"))
            row = _report_row(device, a if accepted else None, report_id, r)
            row.save()
            if not accepted:
                return {"report_id": report_id, "accepted": False, "duplicate": False, "state": None}
            before = a.state
            state = _transition(a, row, r.get("benchmark") or {}, device, now)
            _finish(a, before, device)
    except IntegrityError:
        return {"report_id": report_id, "accepted": False, "duplicate": True, "state": None}
    return {"report_id": report_id, "accepted": True, "duplicate": False, "state": state}


def _report_row(device, a: DeviceAssignment | None, report_id: str, r: dict) -> DeploymentReport:
    return DeploymentReport(
        device_id=device.pk, assignment=a, report_id=report_id, model_name=str(r.get("model", ""))[:100],
        variant_id=r.get("variant_id"), state=r["state"], progress=r.get("progress"),
        error=str(r.get("error") or "")[:4000], benchmark=r.get("benchmark") or {}, accepted=a is not None,
        reported_at=_parse_ts(r.get("ts")),
    )


def _matches(a: DeviceAssignment, variant_id) -> bool:
    wanted = {str(a.variant_id) if a.variant_id else None, str(a.target_variant_id) if a.target_variant_id else None}
    return (str(variant_id) if variant_id else None) in wanted


def _transition(a: DeviceAssignment, r: DeploymentReport, bench: dict, device, now) -> str:
    """Apply a report to its assignment. Reports about the deployment's variant move it through
    downloading → verifying → checking → installed/failed; reports about the rollback target
    (or about nothing, when rolling back to nothing) finish a rollback. The caller saves ``a``
    (:func:`_finish`)."""
    state = r.state
    about_new = str(r.variant_id) == str(a.variant_id) if r.variant_id else a.variant_id is None
    if a.state in (AssignmentState.ROLLING_BACK, AssignmentState.ROLLED_BACK):
        if state in ("rolled_back", "removed") or (state == "installed" and not about_new):
            a.state, a.finished_at = AssignmentState.ROLLED_BACK, now
        elif state == "failed":
            a.error = r.error
    elif about_new:
        if state in ("downloading", "verifying", "checking") and a.state in IN_PROGRESS:
            a.state = state
            a.progress = r.progress if state == "downloading" else a.progress
        elif state == "installed" and a.state in (*IN_PROGRESS, AssignmentState.INSTALLED):
            a.state, a.finished_at, a.error, a.progress = AssignmentState.INSTALLED, now, "", 100.0
        elif state in ("failed", "rolled_back") and a.state in (*IN_PROGRESS, AssignmentState.INSTALLED):
            # The device refused the new variant and kept (or restored) its previous one.
            a.state, a.finished_at = AssignmentState.FAILED, now
            a.error = r.error or a.error or f"device reported {state}"
        elif state == "failed" and a.state == AssignmentState.FAILED and r.error:
            a.error = r.error
    if bench.get("p50_ms") is not None and a.variant_id and about_new:
        a.benchmark_p50_ms = float(bench["p50_ms"])
        a.benchmark_p95_ms = _float(bench.get("p95_ms"))
        a.peak_rss_bytes = _int(bench.get("peak_rss_bytes"))
        VariantBenchmark.objects.update_or_create(
            variant_id=a.variant_id, device_id=device.pk,
            defaults={"cpu_model": device.cpu_model or "", "arch": device.arch or "",
                      "p50_ms": a.benchmark_p50_ms, "p95_ms": a.benchmark_p95_ms,
                      "peak_rss_bytes": a.peak_rss_bytes, "measured_at": now},
        )
    return a.state


def _finish(a: DeviceAssignment, before: str, device) -> None:
    """Save an assignment the reports moved on (once per batch) and act on where it ended up."""
    from . import rollouts

    a.save()
    if a.state != before and a.state == AssignmentState.FAILED:
        bump([device.pk])  # the device's desired state falls back to its previous variant
    if a.state == AssignmentState.INSTALLED and before != AssignmentState.INSTALLED:
        transaction.on_commit(lambda: rollouts.reevaluate_device(device))


def _float(value) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def history(device, limit: int = 200):
    """The device's deployment reports, newest first."""
    return DeploymentReport.objects.filter(device_id=device.pk).select_related("assignment")[:limit]
