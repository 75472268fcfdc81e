"""200 simulated devices (``fleet.rollout_sim``, speaking agent protocol v1 through Django's test
client) converge on a phased rollout with a success gate, a soak and an error threshold: the
phases advance one by one, a few failures stay within the threshold, and unchanged polls (304)
dominate."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from fleet import rollout_sim, rollouts
from fleet.models import AssignmentState, AuditEvent, Deployment, DeploymentState, DeviceAssignment

from .deploy_helpers import add_variant, artifact_root, make_device, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("artifact_root"), pytest.mark.slow]
N = 200
ROUND_S = 10  # every device polls once per round: a 10 s poll interval in simulated time


class ClientTransport:
    """rollout_sim's transport over Django's test client (no sockets, one process)."""

    def __init__(self):
        self.client = Client()

    def request(self, method, path, *, token, body=None, headers=None):
        extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        for k, v in (headers or {}).items():
            extra["HTTP_" + k.upper().replace("-", "_")] = v
        if method == "GET":
            resp = self.client.get(path, **extra)
        else:
            resp = self.client.post(path, body, content_type="application/json", **extra)
        data = b"".join(resp.streaming_content) if resp.streaming else resp.content
        return resp.status_code, {k.lower(): v for k, v in resp.items()}, data


def test_two_hundred_devices_converge_phase_by_phase_and_mostly_get_304():
    model, version = make_model()
    variant = add_variant(version)
    devices = [make_device(f"sim-{i:03d}", labels={"site": "sim"}) for i in range(N)]
    sims = [rollout_sim.SimDevice(index=i, device_id=str(d.pk), token=d.issue_credential())
            for i, d in enumerate(devices)]
    transport, stats, rng = ClientTransport(), rollout_sim.PollStats(), random.Random(0)
    t0 = timezone.now()

    def poll_round():
        for sim in sims:
            rollout_sim.poll(sim, transport, stats, download=True, rng=rng)

    poll_round()  # nothing deployed yet: every device gets its (empty) desired state once
    assert stats.changed == N
    d = rollouts.start(None, Deployment.objects.create(
        model=model, target_kind="labels", target_labels={"site": "sim"}, phases=[1, "10%", "50%", "100%"],
        success_share=0.95, soak_seconds=20, error_threshold="5%"), now=t0)
    # Five devices fail their health check, none of them the canary, spread so that no phase
    # passes 5 % failures: orders 5 (phase 1), 30 and 31 (phase 2), 150 and 151 (phase 3).
    order = {str(a.device_id): a.order for a in d.assignments.all()}
    failing = {5, 30, 31, 150, 151}
    for sim in sims:
        sim.fail = order[sim.device_id] in failing

    history = []
    for r in range(1, 40):
        poll_round()
        step = rollouts.advance(d.pk, now=t0 + timedelta(seconds=r * ROUND_S))
        history.append(step)
        if step == "completed":
            break
    poll_round()  # a completed rollout is quiet

    d.refresh_from_db()
    assert d.state == DeploymentState.COMPLETED, (history, d.state_reason)
    phases = [s for s in history if s.startswith("phase")]
    assert phases == ["phase 1", "phase 2", "phase 3"], history
    # every phase waited for its soak (20 s = 2 rounds of "soaking") after its gate
    assert history.count("soaking") >= 2 * 4, history
    assert "paused" not in history
    counts = rollouts.stats(d)["counts"]
    assert counts == {AssignmentState.INSTALLED: N - 5, AssignmentState.FAILED: 5}
    installed = DeviceAssignment.objects.filter(deployment=d, state=AssignmentState.INSTALLED)
    assert set(installed.values_list("variant_id", flat=True)) == {variant.pk}
    assert all(s.running.get("digits") == str(variant.pk) for s in sims if not s.fail)
    assert AuditEvent.objects.filter(object_id=str(d.pk), action="deployment.phase").count() == 3
    # Each device saw its desired state change at most three times (empty, assigned, fell back
    # after a failure); everything else was a 304.
    assert stats.changed <= 2 * N + 5 and stats.downloads == N
    assert stats.not_modified / stats.polls > 0.8, stats.summary(1.0)
    assert not stats.errors


def test_the_http_transport_follows_the_url_scheme():
    """bench/rollout's transport is fleet.simulator's connection: an https:// server is reached
    over TLS on 443, not in clear text on 80."""
    from fleet.rollout_sim import HttpTransport

    tls, plain = HttpTransport("https://fleet.example/base/"), HttpTransport("http://127.0.0.1:8123")
    assert (tls.https, tls.port, tls.base) == (True, 443, "/base")
    assert (plain.https, plain.port) == (False, 8123)
