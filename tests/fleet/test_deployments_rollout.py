"""The rollout engine with controlled time: phases, gate and soak, auto-pause on errors, manual
pause/resume, abort, and rollback to what each device ran before."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import desired_state, rollouts
from fleet.models import (
    AssignmentState,
    AuditEvent,
    Deployment,
    DeploymentState,
    DeviceAssignment,
    HealthCheck,
)

from .deploy_helpers import add_variant, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("artifact_root")]
T0 = timezone.now().replace(microsecond=0)


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def fleet10():
    return [make_device(f"cam-{i:02d}", labels={"site": "berlin"}) for i in range(10)]


@pytest.fixture
def digits():
    model, version = make_model()
    variant = add_variant(version)
    return model, version, variant


def deployment(model, **kw) -> Deployment:
    fields = {"target_kind": "labels", "target_labels": {"site": "berlin"}, "phases": [1, "50%", "100%"],
              "soak_seconds": 60, "error_threshold": 1, **kw}
    return Deployment.objects.create(model=model, **fields)


def report(assignment: DeviceAssignment, state: str, variant=None, **extra) -> dict:
    variant_id = variant.pk if variant is not None else assignment.target_variant_id
    return desired_state.apply_report(assignment.device, {
        "model": assignment.model.name, "variant_id": str(variant_id) if variant_id else None,
        "state": state, **extra})


def released(d: Deployment):
    return list(d.assignments.filter(current=True).select_related("device", "model"))


def test_phases_are_cumulative_and_end_with_everyone():
    assert rollouts.phase_sizes([1, "10%", "50%", "100%"], 200) == [1, 20, 100, 200]
    assert rollouts.phase_sizes([1, "50%"], 10) == [1, 5, 10]
    assert rollouts.phase_sizes(["10%"], 3) == [1, 3]
    assert rollouts.phase_sizes([5, 2], 10) == [5, 5, 10]


def test_error_threshold_as_count_or_percentage():
    assert not rollouts.threshold_exceeded(1, 1, 10)
    assert rollouts.threshold_exceeded(1, 2, 10)
    assert rollouts.threshold_exceeded(0, 1, 10)
    assert not rollouts.threshold_exceeded("20%", 2, 10)
    assert rollouts.threshold_exceeded("20%", 3, 10)


def test_rollout_goes_phase_by_phase_after_gate_and_soak(fleet10, digits):
    model, version, variant = digits
    d = rollouts.start(None, deployment(model), now=at(0))
    assert d.state == DeploymentState.ACTIVE
    assert len(released(d)) == 1  # the canary
    assert d.assignments.filter(state=AssignmentState.PENDING).count() == 9

    assert rollouts.advance(d.pk, now=at(10)) == "waiting"
    canary = released(d)[0]
    assert canary.variant_id == variant.pk and "pinned" not in canary.reason
    report(canary, "downloading", progress=50.0)
    report(canary, "installed", benchmark={"p50_ms": 1.5, "p95_ms": 2.0, "peak_rss_bytes": 10_000_000})
    assert rollouts.advance(d.pk, now=at(20)) == "soaking"
    assert rollouts.advance(d.pk, now=at(79)) == "soaking"
    assert rollouts.advance(d.pk, now=at(80)) == "phase 1"
    assert len(released(Deployment.objects.get(pk=d.pk))) == 5

    for a in released(d):
        report(a, "installed")
    assert rollouts.advance(d.pk, now=at(90)) == "soaking"
    assert rollouts.advance(d.pk, now=at(150)) == "phase 2"
    for a in released(d):
        report(a, "installed")
    rollouts.advance(d.pk, now=at(160))
    assert rollouts.advance(d.pk, now=at(220)) == "completed"
    d.refresh_from_db()
    assert d.state == DeploymentState.COMPLETED
    assert d.assignments.filter(state=AssignmentState.INSTALLED).count() == 10
    canary.refresh_from_db()
    assert canary.benchmark_p50_ms == 1.5 and canary.peak_rss_bytes == 10_000_000
    actions = set(AuditEvent.objects.filter(object_id=str(d.pk)).values_list("action", flat=True))
    assert {"deployment.start", "deployment.phase", "deployment.complete"} <= actions


def test_a_dip_below_the_gate_restarts_the_soak(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, phases=["50%", "100%"], success_share=0.8, error_threshold="100%"),
                       now=at(0))
    first = released(d)
    for a in first[:4]:
        report(a, "installed")
    assert rollouts.advance(d.pk, now=at(1)) == "soaking"
    report(first[4], "failed", error="disk full")
    report(first[3], "failed", error="crashed")  # 3 of 5 installed: below 80 %
    assert rollouts.advance(d.pk, now=at(100)) == "waiting"
    d.refresh_from_db()
    assert d.gate_met_at is None and d.current_phase == 0


def test_failures_past_the_threshold_pause_the_rollout(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, phases=["50%", "100%"], error_threshold=1), now=at(0))
    first = released(d)
    report(first[0], "failed", error="health check: cosine 0.2 < 0.99")
    assert rollouts.advance(d.pk, now=at(1)) == "waiting"  # 1 failure is tolerated
    report(first[1], "failed", error="child process crashed")
    assert rollouts.advance(d.pk, now=at(2)) == "paused"
    d.refresh_from_db()
    assert d.state == DeploymentState.PAUSED and "exceed the threshold" in d.state_reason
    assert rollouts.advance(d.pk, now=at(3)) == "idle"
    assert AuditEvent.objects.filter(action="deployment.auto_pause", object_id=str(d.pk)).exists()

    # A failed device falls back to its previous model (here: none) in its desired state.
    failed = DeviceAssignment.objects.get(pk=first[0].pk)
    doc = desired_state.document(failed.device, 1)
    assert doc["models"][0]["variant"] is None and doc["models"][0]["state"] == "failed"

    # Resuming accepts the failures seen so far; a new one pauses again.
    d = rollouts.resume(None, d, now=at(10))
    assert d.state == DeploymentState.ACTIVE and d.failures_acknowledged == 2
    assert rollouts.advance(d.pk, now=at(11)) == "waiting"
    report(first[2], "failed", error="x")
    report(first[3], "failed", error="y")
    assert rollouts.advance(d.pk, now=at(12)) == "paused"


def test_manual_pause_stops_phase_release_and_abort_cancels_the_rest(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, soak_seconds=0), now=at(0))
    d = rollouts.pause(None, d, reason="weekend")
    report(released(d)[0], "installed")
    assert rollouts.advance(d.pk, now=at(100)) == "idle"
    with pytest.raises(rollouts.RolloutError):
        rollouts.pause(None, d)
    d = rollouts.abort(None, d, now=at(200))
    assert d.state == DeploymentState.ABORTED
    assert d.assignments.filter(state=AssignmentState.CANCELLED).count() == 9
    assert d.assignments.filter(state=AssignmentState.INSTALLED).count() == 1  # keeps its model


def test_newer_deployment_supersedes_and_rollback_restores_the_previous_variant(fleet10, digits):
    model, version, v1 = digits
    devices = fleet10[:3]
    old = Deployment.objects.create(model=model, target_kind="devices", phases=["100%"], soak_seconds=0)
    old.target_devices.set(devices)
    old = rollouts.start(None, old, now=at(0))
    for a in released(old):
        report(a, "installed")
    assert rollouts.advance(old.pk, now=at(1)) == "completed"

    _, v2version = make_model(version=2)
    v2 = add_variant(v2version)
    new = Deployment.objects.create(model=model, target_kind="devices", phases=["100%"], soak_seconds=0)
    new.target_devices.set(devices)
    new = rollouts.start(None, new, now=at(10))
    rows = released(new)
    assert {a.variant_id for a in rows} == {v2.pk}
    assert {a.previous_variant_id for a in rows} == {v1.pk}
    assert not old.assignments.filter(current=True).exists()
    assert old.assignments.filter(state=AssignmentState.SUPERSEDED).count() == 3
    report(rows[0], "installed")

    new = rollouts.roll_back(None, new, now=at(20))
    assert new.state == DeploymentState.ROLLED_BACK
    for a in released(new):
        assert a.state == AssignmentState.ROLLING_BACK
        doc = desired_state.document(a.device, 2)
        assert doc["models"][0]["variant"]["variant_id"] == str(v1.pk)
        report(a, "installed", variant=v1)
    assert new.assignments.filter(state=AssignmentState.ROLLED_BACK).count() == 3


def test_rollback_to_nothing_removes_the_model(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, phases=["100%"], soak_seconds=0), now=at(0))
    a = released(d)[0]
    report(a, "installed")
    rollouts.abort(None, d, rollback=True, now=at(5))
    a.refresh_from_db()
    assert a.state == AssignmentState.ROLLING_BACK and a.target_variant_id is None
    assert desired_state.document(a.device, 3)["models"][0]["variant"] is None
    res = desired_state.apply_report(a.device, {"model": "digits", "variant_id": None, "state": "removed"})
    assert res["state"] == AssignmentState.ROLLED_BACK


def test_devices_joining_the_label_later_get_the_current_phase(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, phases=["100%"]), now=at(0))
    late = make_device("cam-late", labels={"site": "berlin"})
    rollouts.advance(d.pk, now=at(1))
    assert DeviceAssignment.objects.get(deployment=d, device=late).state == AssignmentState.ASSIGNED


def test_a_device_that_fits_nothing_is_incompatible_not_failed(digits):
    model, version, _ = digits
    make_device("tiny", labels={"site": "berlin"}, disk=10 * 1024**2)
    d = rollouts.start(None, deployment(model, phases=["100%"], soak_seconds=0), now=at(0))
    a = d.assignments.get()
    assert a.state == AssignmentState.INCOMPATIBLE and "no variant fits" in a.reason
    assert rollouts.advance(d.pk, now=at(1)) == "completed"


def test_async_start_releases_nothing_until_the_health_check_exists(fleet10, digits):
    model, version, _ = digits
    d = rollouts.start(None, deployment(model, soak_seconds=0), now=at(0), health_check="async")
    assert d.state == DeploymentState.ACTIVE and d.state_reason.startswith("preparing")
    assert not released(d) and not HealthCheck.objects.filter(version=version).exists()
    # Beat gets there even if the task was lost: it builds the check and releases phase 0,
    # without counting the still-empty phase as a passed gate.
    assert rollouts.advance(d.pk, now=at(1)) == "preparing"
    d.refresh_from_db()
    assert len(released(d)) == 1 and d.current_phase == 0 and d.state_reason == ""
    assert HealthCheck.objects.get(version=version).samples > 0
    assert rollouts.advance(d.pk, now=at(2)) == "waiting"


def test_a_deployment_paused_while_preparing_releases_its_phase_on_resume(fleet10, digits):
    model, _, _ = digits
    d = rollouts.start(None, deployment(model, soak_seconds=0), now=at(0), health_check="async")
    d = rollouts.pause(None, d)
    assert rollouts.prepare(d.pk, now=at(1)) == "idle"  # builds the check, releases nothing
    assert not released(d)
    d = rollouts.resume(None, d, now=at(2))
    assert rollouts.advance(d.pk, now=at(3)) == "waiting"  # released now, gate not passed
    assert len(released(d)) == 1 and Deployment.objects.get(pk=d.pk).current_phase == 0


def test_release_places_on_the_latest_telemetry_of_each_device(digits):
    """Placement in bulk (one telemetry query for the phase) reads each device's latest sample:
    a device whose disk is nearly full by telemetry gets the small variant, not the big one."""
    from .telemetry_helpers import sample, store

    model, version, _ = digits  # the small file from the fixture (a few KB)
    big = add_variant(version, "big", size_bytes=2 * 1024**3, p50=0.5,  # faster, 2 GiB
                      peak_memory_bytes=100 * 1024**2)
    roomy = make_device("roomy", labels={"site": "berlin"}, disk=64 * 1024**3)
    full = make_device("full", labels={"site": "berlin"}, disk=64 * 1024**3)
    store(full.pk, [sample(1, disk_used_bytes=63 * 1024**3, disk_total_bytes=64 * 1024**3)])
    store(roomy.pk, [sample(1, disk_used_bytes=1 * 1024**3, disk_total_bytes=64 * 1024**3)])
    d = rollouts.start(None, deployment(model, phases=["100%"]), now=at(0))
    got = {a.device.name: a for a in released(d)}
    assert got["roomy"].variant_id == big.pk
    assert got["full"].variant_id != big.pk
    assert got["full"].reason_detail["resources"]["disk_source"] == "telemetry"


def test_retry_failed_sends_the_variant_again_and_keeps_the_rollback_target(fleet10, digits):
    model, version, v1 = digits
    devices = fleet10[:2]
    old = Deployment.objects.create(model=model, target_kind="devices", phases=["100%"], soak_seconds=0)
    old.target_devices.set(devices)
    old = rollouts.start(None, old, now=at(0))
    for a in released(old):
        report(a, "installed")
    _, version2 = make_model(version=2)
    v2 = add_variant(version2)
    new = Deployment.objects.create(model=model, target_kind="devices", phases=["100%"], soak_seconds=0,
                                    error_threshold="100%")
    new.target_devices.set(devices)
    new = rollouts.start(None, new, now=at(10))
    failed = released(new)[0]
    report(failed, "failed", error="health check failed")
    assert rollouts.retry_failed(None, new, now=at(20)) == 1
    failed.refresh_from_db()
    assert failed.state == AssignmentState.ASSIGNED and failed.current
    assert failed.variant_id == v2.pk and failed.previous_variant_id == v1.pk
