"""Row locks of the report path on PostgreSQL: a device's report locks that device's assignment
only. It once locked the model row (``select_related`` + ``FOR UPDATE`` locks every joined row),
which every device of a rollout shares, so all reports of a 10,000-device rollout queued behind
one another and behind ``advance`` (which holds the deployment row while it releases a phase)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from fleet import desired_state, rollouts
from fleet.models import AssignmentState, Deployment, DeviceAssignment

from .deploy_helpers import add_variant, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("artifact_root")]


@pytest.fixture
def rollout():
    if connection.vendor != "postgresql":
        pytest.skip("row locks are a PostgreSQL matter (SQLite locks the whole database)")
    model, version = make_model()
    variant = add_variant(version, p50=2.0)
    devices = [make_device(f"cam-{i}", labels={"site": "berlin"}) for i in range(2)]
    d = Deployment.objects.create(model=model, target_kind="labels", target_labels={"site": "berlin"},
                                  phases=["100%"], soak_seconds=0)
    return rollouts.start(None, d), variant, devices


class Holder(threading.Thread):
    """Holds FOR UPDATE locks on the shared rows (the deployment and the model) in its own
    connection until told to let go, as ``advance`` does while it releases a phase."""

    def __init__(self, deployment: Deployment):
        super().__init__(daemon=True)
        self.deployment = deployment
        self.locked, self.release = threading.Event(), threading.Event()

    def run(self):
        try:
            with transaction.atomic():
                Deployment.objects.select_for_update().select_related("model").get(pk=self.deployment.pk)
                self.locked.set()
                self.release.wait(30)
        finally:
            connections.close_all()


def test_a_report_does_not_wait_for_locks_on_the_deployment_or_the_model(rollout):
    d, variant, devices = rollout
    holder = Holder(d)
    holder.start()
    assert holder.locked.wait(10)
    try:
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '3s'")  # a wait would fail the test, not hang it
        for state in ("downloading", "verifying", "checking", "installed"):
            result = desired_state.apply_report(devices[0], {
                "report_id": f"r-{state}", "model": "digits", "variant_id": str(variant.pk), "state": state,
                "benchmark": {"p50_ms": 1.5, "p95_ms": 2.5} if state == "installed" else {}})
            assert result["accepted"] and result["state"] == state
        # Re-placement after the install (on commit) also locks the device's rows only.
        assert rollouts.reevaluate_device(devices[0]) == 0
    finally:
        holder.release.set()
        holder.join(10)
        with connection.cursor() as cur:
            cur.execute("RESET lock_timeout")
    assert DeviceAssignment.objects.get(device=devices[0], current=True).state == AssignmentState.INSTALLED


def test_a_replay_racing_the_first_copy_is_answered_as_a_duplicate(rollout):
    """The batch's duplicate check reads committed reports; a concurrent copy of the same report
    that is not committed yet makes the batch insert wait, then fail. The batch is then applied
    report by report: the raced report is a duplicate, the others are applied once."""
    from fleet.models import DeploymentReport

    d, variant, devices = rollout
    device = devices[1]
    inserted, go = threading.Event(), threading.Event()

    def first_copy():
        try:
            with transaction.atomic():
                DeploymentReport.objects.create(device=device, report_id="race", model_name="other",
                                                state="failed", accepted=False)
                inserted.set()
                go.wait(10)
        finally:
            connections.close_all()

    t = threading.Thread(target=first_copy, daemon=True)
    t.start()
    assert inserted.wait(10)
    threading.Timer(1.0, go.set).start()  # commit while the batch below waits on the unique index
    results = desired_state.apply_reports(device, [
        {"report_id": "race", "model": "other", "state": "failed"},
        {"report_id": "ok-1", "model": "digits", "variant_id": str(variant.pk), "state": "downloading"},
    ])
    t.join(10)
    assert [r["duplicate"] for r in results] == [True, False]
    assert results[1]["accepted"] and results[1]["state"] == "downloading"
    assert DeploymentReport.objects.filter(device=device, report_id="race").count() == 1
    assert DeviceAssignment.objects.get(device=device, current=True).state == AssignmentState.DOWNLOADING
