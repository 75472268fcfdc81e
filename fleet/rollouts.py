"""The rollout engine: start a deployment, release its phases, gate and soak them, pause on
errors, and stop or roll back on request. Every function takes ``now`` so tests control time;
beat calls :func:`advance_all` (see ``fleet.deploy_tasks``).

Semantics (docs/deployments.md has the long form):

- The targeted active devices are put in a stable pseudo-random order (a hash of deployment
  and device ids), then cut into cumulative phases: ``[1, "10%", "50%", "100%"]`` on 200 devices
  releases 1, then 20, then 100, then 200 devices. The last phase always covers everyone.
- Releasing a device places a variant on it (``fleet.placement``) and makes its assignment the
  device's current one for the model, superseding any older deployment's.
- Gate: when the share of the released devices (placeable ones) that are installed reaches
  ``success_share``, the soak clock starts; if it still holds after ``soak_seconds`` the next phase
  is released, or the deployment completes. A dip below the share restarts the soak.
- Errors: when failures (minus those an operator accepted by resuming) exceed
  ``error_threshold`` (a count, or a percentage of the released devices), the rollout pauses.
- Abort stops releasing phases (devices not yet released are cancelled; released ones keep their
  assignment). Rollback sends every released device back to the variant it ran before this
  deployment, or to nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from . import audit, desired_state, placement_data
from .models import (
    AssignmentState,
    Deployment,
    DeploymentState,
    Device,
    DeviceAssignment,
    DeviceStatus,
    HealthCheck,
)
from .models.deployments import IN_PROGRESS, TargetKind, VariantPolicy, parse_amount

log = logging.getLogger(__name__)


class RolloutError(Exception):
    """An action that does not apply to the deployment in its current state (answered 409)."""


# --- pure helpers --------------------------------------------------------------------------------


def phase_sizes(phases: list, total: int) -> list[int]:
    """Cumulative device counts per phase; non-decreasing, the last one is ``total``."""
    sizes, prev = [], 0
    for phase in phases:
        kind, value = parse_amount(phase)
        n = int(value) if kind == "count" else math.ceil(total * value / 100)
        n = max(prev, min(total, n))
        sizes.append(n)
        prev = n
    if not sizes or sizes[-1] < total:
        sizes.append(total)
    return sizes


def phase_of(index: int, sizes: list[int]) -> int:
    """The phase that releases the device at position ``index`` of the rollout order."""
    for phase, size in enumerate(sizes):
        if index < size:
            return phase
    return len(sizes) - 1


def threshold_exceeded(threshold, failures: int, released: int) -> bool:
    """``failures`` pass the tolerated count, or the tolerated share of ``released``."""
    kind, value = parse_amount(threshold, allow_zero=True)
    if failures <= 0:
        return False
    if kind == "count":
        return failures > value
    return released > 0 and failures * 100.0 / released > value


def rollout_key(deployment_id, device_id) -> str:
    return hashlib.sha256(f"{deployment_id}:{device_id}".encode()).hexdigest()


# --- targets ------------------------------------------------------------------------------------


def matching_devices(target_kind: str, target_labels: dict | None = None, device_ids=None):
    """Active devices a target selects."""
    qs = Device.objects.filter(status=DeviceStatus.ACTIVE)
    if target_kind == TargetKind.LABELS:
        for key, value in (target_labels or {}).items():
            qs = qs.filter(**{f"labels__{key}": value})
    elif target_kind == TargetKind.DEVICES:
        qs = qs.filter(pk__in=list(device_ids or []))
    return qs


def targeted_devices(deployment: Deployment):
    ids = (list(deployment.target_devices.values_list("pk", flat=True))
           if deployment.target_kind == TargetKind.DEVICES else None)
    return matching_devices(deployment.target_kind, deployment.target_labels, ids)


def latest_version(model):
    return model.versions.order_by("-version").first()


def deployed_version(deployment: Deployment):
    return deployment.resolved_version or deployment.version or latest_version(deployment.model)


# --- preview ------------------------------------------------------------------------------------


def preview(deployment: Deployment, device_ids=None) -> dict:
    """Which devices a (possibly unsaved) deployment matches and what each would get, and why."""
    version = deployed_version(deployment)
    devices = list(matching_devices(deployment.target_kind, deployment.target_labels, device_ids)
                   .order_by("name"))
    if version is None:
        return {"version": None, "devices": [], "detail": "the model has no version"}
    placer = placement_data.Placer(version, deployment.variant_policy, deployment.pinned_variant)
    rows = []
    order = sorted(devices, key=lambda d: rollout_key(deployment.pk, d.pk))
    sizes = phase_sizes(deployment.phases, len(order))
    phase_by_device = {d.pk: phase_of(i, sizes) for i, d in enumerate(order)}
    for device in devices:
        choice = placer.choose(device)
        rows.append({"device_id": str(device.pk), "device": device.name, "phase": phase_by_device[device.pk],
                     "variant_id": choice.variant_id, "reason": choice.reason, "detail": choice.detail})
    return {"version": {"id": str(version.pk), "version": version.version}, "phase_sizes": sizes,
            "devices": rows}


# --- start and release --------------------------------------------------------------------------


PREPARING = "preparing: building the health check"


def start(user, deployment: Deployment, *, now: datetime | None = None, ip: str | None = None,
          health_check: str = "inline") -> Deployment:
    """Draft → active: resolve the version, order the devices into phases and release the first
    phase once the version's health check exists.

    ``health_check="inline"`` builds a missing check here (onnxruntime runs the original on a few
    inputs: seconds for a big model). ``"async"`` (the API) leaves it to the Celery task
    ``fleet.deployments.prepare``: the deployment is active with ``state_reason`` "preparing…"
    and nothing released until :func:`prepare` has built the check; beat's :func:`advance` does
    the same if the task was lost, so a deployment never waits for ever."""
    from .healthchecks import ensure_health_check

    now = now or timezone.now()
    version = deployment.version or latest_version(deployment.model)
    if version is None:
        raise RolloutError("the model has no version to deploy")
    ready = HealthCheck.objects.filter(version=version).exists()
    if not ready and health_check == "inline":
        # Outside the transaction: it runs onnxruntime and may take a moment; it is idempotent.
        ensure_health_check(version)
        ready = True
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if d.state != DeploymentState.DRAFT:
            raise RolloutError(f"only a draft can start; this deployment is {d.state}")
        before = d.snapshot()
        d.resolved_version = version
        devices = sorted(targeted_devices(d), key=lambda dev: rollout_key(d.pk, dev.pk))
        sizes = phase_sizes(d.phases, len(devices))
        DeviceAssignment.objects.bulk_create([
            DeviceAssignment(deployment=d, device=dev, model_id=d.model_id, order=i, phase=phase_of(i, sizes))
            for i, dev in enumerate(devices)
        ])
        d.state, d.current_phase = DeploymentState.ACTIVE, 0
        d.started_at = d.phase_started_at = now
        d.gate_met_at, d.state_reason = None, "" if ready else f"{PREPARING} of version {version.version}"
        d.save()
        if ready:
            release(d, 0, now=now)
        else:
            pk = d.pk
            transaction.on_commit(lambda: _enqueue_prepare(pk))
        audit.record(user, "deployment.start", d, before=before,
                     after={**d.snapshot(), "devices": len(devices), "phase_sizes": sizes}, ip=ip)
    return d


def _enqueue_prepare(deployment_id) -> None:
    from .deploy_tasks import prepare_deployment

    try:
        prepare_deployment.delay(str(deployment_id))
    except Exception as exc:  # broker down: beat's advance prepares it instead
        log.warning("could not queue the preparation of deployment %s: %s", deployment_id, exc)


def prepare(deployment_id, *, now: datetime | None = None) -> str:
    """Build the health check of a started deployment's version (outside any lock), then
    release its current phase if the deployment is active. Idempotent (the Celery task
    ``fleet.deployments.prepare`` and beat's :func:`advance` both call it)."""
    from compression.models import ModelVersion

    from .healthchecks import ensure_health_check

    version_id = (Deployment.objects.filter(pk=deployment_id)
                  .values_list("resolved_version_id", flat=True).first())
    if version_id is None:
        return "idle"
    ensure_health_check(ModelVersion.objects.get(pk=version_id))
    now = now or timezone.now()
    with transaction.atomic():
        d = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if d is None or d.state != DeploymentState.ACTIVE:
            return "idle"
        n = release(d, d.current_phase, now=now)
        if d.state_reason.startswith(PREPARING):
            d.state_reason, d.phase_started_at, d.gate_met_at = "", now, None
            d.save(update_fields=["state_reason", "phase_started_at", "gate_met_at", "updated_at"])
    return f"prepared: {n} released"


def release(deployment: Deployment, phase: int, *, now: datetime) -> int:
    """Place and assign every pending device of phases up to ``phase``. Returns how many.

    Batched: one query for the devices' latest telemetry per 500 devices, one locking read of
    their older current assignments, and bulk updates, so releasing the 50 % → 100 % phase of a
    10,000-device fleet takes seconds, not minutes, inside the deployment's lock."""
    pending = list(
        deployment.assignments.select_related("device").filter(state=AssignmentState.PENDING, phase__lte=phase)
    )
    if not pending:
        return 0
    placer = placement_data.Placer(deployment.resolved_version, deployment.variant_policy, deployment.pinned_variant)
    samples = placement_data.latest_samples([a.device_id for a in pending])
    placed, incompatible = [], []
    for a in pending:
        choice = placer.choose(a.device, samples.get(a.device_id))
        a.reason, a.reason_detail, a.updated_at = choice.reason, choice.detail, now
        if choice.variant_id is None:
            a.state = AssignmentState.INCOMPATIBLE
            incompatible.append(a)
        else:
            a.variant_id = choice.variant_id
            placed.append(a)
    _update_in_chunks([a.pk for a in incompatible], state=AssignmentState.INCOMPATIBLE, updated_at=now)
    _write_reasons(incompatible)
    make_current_many(placed, now=now)
    desired_state.bump(a.device_id for a in placed)
    return len(pending)


def running_variant_id(a: DeviceAssignment):
    """What the device runs for this assignment's model, as far as the server knows."""
    if a.state == AssignmentState.INSTALLED:
        return a.variant_id
    if a.state in (AssignmentState.SUPERSEDED, AssignmentState.CANCELLED, AssignmentState.PENDING,
                   AssignmentState.INCOMPATIBLE):
        return None
    return a.previous_variant_id  # in progress, failed, rolling back or rolled back


def make_current_many(assignments: list[DeviceAssignment], *, now: datetime) -> None:
    """Make each assignment its device's current one for its model; the older current one is
    superseded and what it ran becomes the new assignment's rollback target. The caller bumps
    the devices' desired state. Older ones are updated first (one current per device and model
    is a database constraint)."""
    if not assignments:
        return
    by_key = {(a.device_id, a.model_id): a for a in assignments}
    models = {a.model_id for a in assignments}
    olds = []
    device_ids = list({a.device_id for a in assignments})
    for i in range(0, len(device_ids), 500):
        olds += list(DeviceAssignment.objects.select_for_update()
                     .filter(device_id__in=device_ids[i:i + 500], model_id__in=models, current=True)
                     .exclude(pk__in=[a.pk for a in assignments]))
    for a in assignments:
        if not a.current:  # a retried assignment already current keeps its rollback target
            a.previous_variant_id = None
    by_state: dict[str, list] = defaultdict(list)
    for old in olds:
        a = by_key.get((old.device_id, old.model_id))
        if a is None:
            continue
        a.previous_variant_id = running_variant_id(old)
        old.current, old.updated_at = False, now
        if old.state in (*IN_PROGRESS, AssignmentState.INSTALLED):
            old.state = AssignmentState.SUPERSEDED
        by_state[old.state].append(old.pk)
    # Django's bulk_update writes CASE expressions and costs ~30 ms per row here; the values are
    # shared by many rows, so one UPDATE per distinct value does it in a few statements.
    for state, pks in by_state.items():
        _update_in_chunks(pks, current=False, state=state, updated_at=now)
    for a in assignments:
        a.current, a.state, a.assigned_at, a.updated_at = True, AssignmentState.ASSIGNED, now, now
        a.error, a.progress = "", None
    by_variants: dict[tuple, list] = defaultdict(list)
    for a in assignments:
        by_variants[(a.variant_id, a.previous_variant_id)].append(a.pk)
    for (variant_id, previous_id), pks in by_variants.items():
        _update_in_chunks(pks, current=True, state=AssignmentState.ASSIGNED, assigned_at=now, updated_at=now,
                          error="", progress=None, variant_id=variant_id, previous_variant_id=previous_id)
    _write_reasons(assignments)


def _update_in_chunks(pks: list, **values) -> None:
    for i in range(0, len(pks), 500):
        DeviceAssignment.objects.filter(pk__in=pks[i:i + 500]).update(**values)


def _write_reasons(assignments: list[DeviceAssignment]) -> None:
    """Each assignment's own ``reason`` and ``reason_detail``: one prepared statement, many rows."""
    if not assignments:
        return
    from django.db import connection

    meta = DeviceAssignment._meta
    fields = [meta.get_field(n) for n in ("reason", "reason_detail", "id")]
    sql = (f"UPDATE {connection.ops.quote_name(meta.db_table)} SET "
           f"{connection.ops.quote_name(fields[0].column)} = %s, {connection.ops.quote_name(fields[1].column)} = %s "
           f"WHERE {connection.ops.quote_name(fields[2].column)} = %s")
    rows = [[f.get_db_prep_save(getattr(a, f.attname), connection) for f in fields] for a in assignments]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


# --- the beat step ------------------------------------------------------------------------------


def stats(deployment: Deployment, *, released_only: bool = True) -> dict:
    """Counts of the deployment's assignments by state (released phases only by default)."""
    qs = deployment.assignments.all()
    if released_only:
        qs = qs.filter(phase__lte=deployment.current_phase)
    counts = Counter(qs.values_list("state", flat=True))
    released = sum(counts.values())
    excluded = sum(counts[s] for s in (AssignmentState.INCOMPATIBLE, AssignmentState.SUPERSEDED,
                                       AssignmentState.CANCELLED, AssignmentState.PENDING))
    return {"counts": dict(counts), "released": released, "eligible": released - excluded,
            "installed": counts[AssignmentState.INSTALLED], "failed": counts[AssignmentState.FAILED]}


def advance(deployment_id, *, now: datetime | None = None) -> str:
    """One step of one rollout: auto-pause, gate, soak, next phase or completion. Returns what
    happened ("preparing", "paused", "phase N", "completed", "waiting", "soaking" or "idle").

    While the version's health check does not exist (``start(..., health_check="async")`` and
    the task has not run), it builds it and releases the current phase instead: no gate is
    evaluated on a phase whose devices have not been released."""
    now = now or timezone.now()
    version_id = (Deployment.objects.filter(pk=deployment_id, state=DeploymentState.ACTIVE)
                  .values_list("resolved_version_id", flat=True).first())
    if version_id is None:
        return "idle"
    if not HealthCheck.objects.filter(version_id=version_id).exists():
        prepare(deployment_id, now=now)  # the task was lost or has not run yet
        return "preparing"
    with transaction.atomic():
        d = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if d is None or d.state != DeploymentState.ACTIVE:
            return "idle"
        _add_new_targets(d, now=now)
        # Devices of released phases still pending (new targets, or a phase whose release waited
        # for the health check while the deployment was paused) get their variant now.
        release(d, d.current_phase, now=now)
        s = stats(d)
        failures = s["failed"] - d.failures_acknowledged
        if threshold_exceeded(d.error_threshold, failures, s["released"]):
            before = d.snapshot()
            d.state = DeploymentState.PAUSED
            d.state_reason = (f"paused automatically: {failures} failure(s) among {s['released']} "
                              f"device(s) exceed the threshold {d.error_threshold}")
            d.gate_met_at = None
            d.save()
            audit.record(None, "deployment.auto_pause", d, before=before, after=d.snapshot())
            return "paused"
        share = 1.0 if s["eligible"] == 0 else s["installed"] / s["eligible"]
        if share + 1e-9 < d.success_share:
            if d.gate_met_at is not None:
                d.gate_met_at = None
                d.save(update_fields=["gate_met_at", "updated_at"])
            return "waiting"
        if d.gate_met_at is None:
            d.gate_met_at = now
            d.save(update_fields=["gate_met_at", "updated_at"])
        if (now - d.gate_met_at).total_seconds() < d.soak_seconds:
            return "soaking"
        last_phase = d.assignments.order_by("-phase").values_list("phase", flat=True).first() or 0
        before = d.snapshot()
        if d.current_phase >= last_phase:
            d.state, d.finished_at = DeploymentState.COMPLETED, now
            d.state_reason = f"all phases passed: {s['installed']} of {s['eligible']} device(s) installed"
            d.save()
            audit.record(None, "deployment.complete", d, before=before, after=d.snapshot())
            return "completed"
        d.current_phase += 1
        d.phase_started_at, d.gate_met_at = now, None
        d.save()
        release(d, d.current_phase, now=now)
        audit.record(None, "deployment.phase", d, before=before, after=d.snapshot())
        return f"phase {d.current_phase}"


def _add_new_targets(d: Deployment, *, now: datetime) -> None:
    """Devices that started matching the target after the start join the current phase."""
    known = set(d.assignments.values_list("device_id", flat=True))
    new_ids = [pk for pk in targeted_devices(d).values_list("pk", flat=True) if pk not in known]
    if not new_ids:
        return
    new = list(Device.objects.filter(pk__in=new_ids))
    start_order = len(known)
    DeviceAssignment.objects.bulk_create([
        DeviceAssignment(deployment=d, device=dev, model_id=d.model_id, order=start_order + i,
                         phase=d.current_phase)
        for i, dev in enumerate(new)
    ])


def advance_all(*, now: datetime | None = None) -> dict:
    """Advance every active rollout (the beat task)."""
    ids = list(Deployment.objects.filter(state=DeploymentState.ACTIVE).values_list("pk", flat=True))
    return {str(pk): advance(pk, now=now) for pk in ids}


# --- operator actions ---------------------------------------------------------------------------


# --- drafts --------------------------------------------------------------------------------------
# The API (fleet.api.deployments) and the dashboard (fleet.views.deployments) validate their input
# into an unsaved Deployment (the model's clean() holds the rules); these save it and audit it.


def create(user, deployment: Deployment, *, target_devices=(), ip: str | None = None) -> Deployment:
    """Save a new draft with its explicit targets (``target_kind="devices"``), audited."""
    with transaction.atomic():
        if getattr(user, "is_authenticated", False) and getattr(user, "pk", None) is not None:
            deployment.created_by = user
        deployment.save()
        if deployment.target_kind == TargetKind.DEVICES:
            deployment.target_devices.set(target_devices)
        audit.record(user, "deployment.create", deployment, after=deployment.snapshot(), ip=ip)
    return deployment


def update_draft(user, deployment: Deployment, changes: dict, *, target_devices=None,
                 ip: str | None = None) -> Deployment:
    """Change a draft's fields (and, when given, its explicit targets); a started deployment
    cannot be edited (RolloutError)."""
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if d.state != DeploymentState.DRAFT:
            raise RolloutError(f"only drafts can be edited; this deployment is {d.state}")
        before = d.snapshot()
        for name, value in changes.items():
            setattr(d, name, value)
        d.save()
        if target_devices is not None:
            d.target_devices.set(target_devices)
        audit.record(user, "deployment.update", d, before=before, after=d.snapshot(), ip=ip)
    return d


def delete_draft(user, deployment: Deployment, *, ip: str | None = None) -> None:
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if d.state != DeploymentState.DRAFT:
            raise RolloutError("only drafts can be deleted; abort or roll back a started deployment")
        audit.record(user, "deployment.delete", d, before=d.snapshot(), ip=ip)
        d.delete()


# --- actions on a deployment ---------------------------------------------------------------------


def _act(user, deployment: Deployment, action: str, allowed: tuple, ip: str | None, change) -> Deployment:
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if d.state not in allowed:
            raise RolloutError(f"cannot {action} a deployment that is {d.state}")
        before = d.snapshot()
        change(d)
        d.save()
        audit.record(user, f"deployment.{action}", d, before=before, after=d.snapshot(), ip=ip)
    return d


def pause(user, deployment: Deployment, *, reason: str = "", ip: str | None = None) -> Deployment:
    """Stop releasing phases; devices already released continue."""
    def change(d):
        d.state, d.gate_met_at = DeploymentState.PAUSED, None
        d.state_reason = f"paused by {audit.actor_of(user)[2]}" + (f": {reason}" if reason else "")
    return _act(user, deployment, "pause", (DeploymentState.ACTIVE,), ip, change)


def resume(user, deployment: Deployment, *, ip: str | None = None, now: datetime | None = None) -> Deployment:
    """Continue a paused rollout. The failures seen so far count as accepted by the operator."""
    def change(d):
        d.failures_acknowledged = stats(d)["failed"]
        d.state, d.state_reason, d.gate_met_at = DeploymentState.ACTIVE, "", None
        d.phase_started_at = now or timezone.now()
    return _act(user, deployment, "resume", (DeploymentState.PAUSED,), ip, change)


def retry_failed(user, deployment: Deployment, *, ip: str | None = None, now: datetime | None = None) -> int:
    """Send the failed devices the deployment's variant again (re-placed)."""
    now = now or timezone.now()
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if not d.is_live:
            raise RolloutError(f"cannot retry devices of a deployment that is {d.state}")
        failed = list(d.assignments.filter(state=AssignmentState.FAILED, current=True))
        for a in failed:
            a.state = AssignmentState.PENDING
            a.save(update_fields=["state", "updated_at"])
        n = release(d, d.current_phase, now=now)
        d.failures_acknowledged = max(0, d.failures_acknowledged - len(failed))
        d.save(update_fields=["failures_acknowledged", "updated_at"])
        audit.record(user, "deployment.retry_failed", d, after={"devices": len(failed)}, ip=ip)
    return n


def abort(user, deployment: Deployment, *, rollback: bool = False, ip: str | None = None,
          now: datetime | None = None) -> Deployment:
    """Stop the rollout for good. Devices not yet released are cancelled; with ``rollback`` the
    released ones go back to what they ran before."""
    now = now or timezone.now()
    if rollback:
        return roll_back(user, deployment, ip=ip, now=now)

    def change(d):
        d.assignments.filter(state=AssignmentState.PENDING).update(state=AssignmentState.CANCELLED, updated_at=now)
        d.state, d.finished_at = DeploymentState.ABORTED, now
        d.state_reason = f"aborted by {audit.actor_of(user)[2]}"
    return _act(user, deployment, "abort", (DeploymentState.DRAFT, DeploymentState.ACTIVE, DeploymentState.PAUSED),
                ip, change)


def roll_back(user, deployment: Deployment, *, ip: str | None = None, now: datetime | None = None) -> Deployment:
    """Every device this deployment still governs goes back to its previous variant (or to no
    model at all when it had none). Works on live, completed and aborted deployments."""
    now = now or timezone.now()

    def change(d):
        d.assignments.filter(state=AssignmentState.PENDING).update(state=AssignmentState.CANCELLED, updated_at=now)
        current = d.assignments.filter(current=True).exclude(state=AssignmentState.ROLLED_BACK)
        devices = list(current.values_list("device_id", flat=True))
        # Failed devices already run their previous variant; the rest must go back.
        current.filter(state=AssignmentState.FAILED).update(state=AssignmentState.ROLLED_BACK, updated_at=now)
        current.exclude(state=AssignmentState.FAILED).update(state=AssignmentState.ROLLING_BACK, updated_at=now)
        desired_state.bump(devices)
        d.state, d.finished_at = DeploymentState.ROLLED_BACK, now
        d.state_reason = f"rolled back by {audit.actor_of(user)[2]} on {len(devices)} device(s)"
    return _act(user, deployment, "rollback", (DeploymentState.ACTIVE, DeploymentState.PAUSED,
                                              DeploymentState.COMPLETED, DeploymentState.ABORTED), ip, change)


# --- re-placement -------------------------------------------------------------------------------


def reevaluate_device(device: Device, *, now: datetime | None = None) -> int:
    """Re-run the ``auto`` policy for the device's current assignments that are not mid-install.
    Switches when the chosen variant no longer fits, or when another variant measured on this
    device class is clearly faster (see ``placement.better_enough``). Returns how many changed."""
    from .placement import better_enough

    now = now or timezone.now()
    changed = 0
    with transaction.atomic():
        # Lock the device's assignments only: not the deployment row (``advance`` holds it while
        # it releases a phase) nor the device.
        rows = list(DeviceAssignment.objects.select_for_update(of=("self",)).select_related("deployment", "device")
                    .filter(device=device, current=True,
                            state__in=(AssignmentState.ASSIGNED, AssignmentState.INSTALLED),
                            deployment__variant_policy=VariantPolicy.AUTO,
                            deployment__state__in=(DeploymentState.ACTIVE, DeploymentState.PAUSED,
                                                   DeploymentState.COMPLETED)))
        for a in rows:
            placer = placement_data.Placer(a.deployment.resolved_version, VariantPolicy.AUTO, None)
            if [str(c.variant_id) for c in placer.candidates] == [str(a.variant_id)]:
                continue  # the only deployable variant is the one it runs: nothing to choose
            choice = placer.choose(a.device)
            if choice.variant_id is None or str(choice.variant_id) == str(a.variant_id):
                continue
            ranking = {r["variant_id"]: r for r in choice.detail.get("ranking", [])}
            mine = ranking.get(str(a.variant_id))
            new = ranking[str(choice.variant_id)]
            still_fits = mine is not None
            measured = new["latency_source"] == "measured on this device class"
            if still_fits and not (measured and better_enough(mine["latency_ms"], new["latency_ms"])):
                continue
            a.variant_id = choice.variant_id
            a.reason = f"re-placed: {choice.reason}"
            a.reason_detail = {**choice.detail, "replaced_at": now.isoformat()}
            a.state, a.assigned_at, a.error, a.progress = AssignmentState.ASSIGNED, now, "", None
            a.save()
            changed += 1
        if changed:
            desired_state.bump([device.pk])
    return changed


def reevaluate_all(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Beat: re-place devices in live ``auto`` deployments (resources or measurements changed)."""
    device_ids = (DeviceAssignment.objects.filter(
        current=True, state__in=(AssignmentState.ASSIGNED, AssignmentState.INSTALLED),
        deployment__variant_policy=VariantPolicy.AUTO,
        deployment__state__in=(DeploymentState.ACTIVE, DeploymentState.PAUSED, DeploymentState.COMPLETED),
    ).order_by("updated_at").values_list("device_id", flat=True).distinct()[:limit])
    return sum(reevaluate_device(dev, now=now) for dev in Device.objects.filter(pk__in=list(device_ids)))
