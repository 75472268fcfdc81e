"""End to end: the real agent deployment code (agents.models_job, agents.artifacts and the child
``python -m agents.check_model``) against a live test server."""

from __future__ import annotations

import os
from types import SimpleNamespace

import onnxruntime as ort
import pytest

from agents import artifacts
from agents.client import AgentClient
from agents.models_job import DeployJob, DeployOptions, ModelsDir
from compression import storage
from fleet import rollouts
from fleet.models import AssignmentState, Deployment, DeploymentState, DeviceAssignment
from tests.fleet.deploy_helpers import (  # noqa: F401
    add_variant,
    artifact_root,
    broken_onnx_bytes,
    make_device,
    make_model,
    onnx_bytes,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("artifact_root")]


class Agent:
    """One device's deployment job, driven by hand (no daemon loop, no sleeping)."""

    def __init__(self, live_server, device, tmp_path):
        token = device.issue_credential()
        base = tmp_path / device.name
        config = SimpleNamespace(effective_models_dir=str(base / "models"), state_dir=str(base / "state"),
                                 timeout=10.0, ca_file=None, jitter=0.1)
        os.makedirs(config.state_dir, exist_ok=True)
        ctx = SimpleNamespace(config=config, client=AgentClient(live_server.url, token=token),
                              creds={"device_token": token})
        self.device = device
        self.job = DeployJob(ctx, DeployOptions())
        self.models = ModelsDir(config.effective_models_dir)

    def step(self):
        self.job.run(0.0)

    def current(self, model="digits"):
        path = os.path.join(self.models.model_dir(model), "current")
        return os.path.realpath(path) if os.path.islink(path) else None


def start(model, **kw) -> Deployment:
    fields = {"target_kind": "labels", "target_labels": {"site": "berlin"}, "phases": ["100%"],
              "soak_seconds": 0, "error_threshold": 0, **kw}
    return rollouts.start(None, Deployment.objects.create(model=model, **fields))


def converge(agents, deployment, rounds=3):
    for _ in range(rounds):
        for agent in agents:
            agent.step()
        rollouts.advance(deployment.pk)


@pytest.fixture
def fleet(live_server, tmp_path):
    berlin = [make_device(f"cam-{i}", labels={"site": "berlin"}) for i in range(2)]
    paris = make_device("cam-paris", labels={"site": "paris"})
    return [Agent(live_server, d, tmp_path) for d in berlin], Agent(live_server, paris, tmp_path)


def test_deploy_to_a_label_converges_and_current_loads_in_onnxruntime(fleet):
    agents, outsider = fleet
    model, version = make_model()
    variant = add_variant(version)
    d = start(model)
    converge(agents + [outsider], d)
    d.refresh_from_db()
    assert d.state == DeploymentState.COMPLETED, (
        list(d.assignments.values_list("state", "error")), [a.job.outbox for a in agents],
        [a.job.last_error for a in agents])
    for agent in agents:
        path = agent.current()
        assert path and path.endswith(f"{variant.sha256}.onnx")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].name == "x"
        a = DeviceAssignment.objects.get(deployment=d, device=agent.device)
        assert a.state == AssignmentState.INSTALLED
        assert a.benchmark_p50_ms > 0 and a.peak_rss_bytes > 0
        states = list(a.reports.order_by("received_at", "id").values_list("state", flat=True))
        assert states[0] == "downloading" and states[-3:] == ["verifying", "checking", "installed"]
    assert outsider.current() is None


def test_an_interrupted_download_resumes_where_it_stopped(live_server, tmp_path):
    device = make_device("cam-big", labels={"site": "berlin"})
    model, version = make_model()
    variant = add_variant(version, data=onnx_bytes("big", hidden=(512, 256)))
    assert variant.size_bytes > 2 * artifacts.PIECE
    start(model)
    token = device.issue_credential()
    part = str(tmp_path / f"{variant.sha256}.part")
    url = f"/api/v1/agent/artifacts/{variant.pk}"
    with pytest.raises(artifacts.DownloadError):
        artifacts.download(live_server.url, url, token, part, sha256=variant.sha256, size=variant.size_bytes,
                           stop=lambda: True)
    kept = os.path.getsize(part)
    assert 0 < kept < variant.size_bytes

    first_progress = []
    artifacts.download(live_server.url, url, token, part, sha256=variant.sha256, size=variant.size_bytes,
                       progress=lambda done, total: first_progress.append(done))
    assert first_progress[0] > kept  # counted from the kept bytes on, not from zero
    assert artifacts.file_sha256(part) == variant.sha256


def test_corrupted_artifact_and_bad_signature_are_rejected_and_the_old_model_stays(fleet):
    agents, _ = fleet
    model, version = make_model()
    good = add_variant(version)
    converge(agents, start(model))
    old = agents[0].current()
    assert old.endswith(f"{good.sha256}.onnx")

    _, v2 = make_model(version=2)
    corrupted = add_variant(v2)
    path = storage.path_of(corrupted.file)
    os.chmod(path, 0o644)
    path.write_bytes(b"\0" * 16 + path.read_bytes()[16:])  # same size, other bytes
    d2 = start(model, target_kind="devices", target_labels={})
    d2.target_devices.set([agents[0].device])
    rollouts.advance(d2.pk)
    converge(agents[:1], d2)
    a = DeviceAssignment.objects.get(deployment=d2, device=agents[0].device)
    assert a.state == AssignmentState.FAILED and "sha256 mismatch" in a.error
    assert agents[0].current() == old

    _, v3 = make_model(version=3)
    forged = add_variant(v3, signature=good.signature)  # a valid signature, of another digest
    d3 = start(model, target_kind="devices", target_labels={})
    d3.target_devices.set([agents[1].device])
    rollouts.advance(d3.pk)
    converge(agents[1:], d3)
    a = DeviceAssignment.objects.get(deployment=d3, device=agents[1].device)
    assert a.state == AssignmentState.FAILED and "bad signature" in a.error
    assert agents[1].current().endswith(f"{good.sha256}.onnx")
    assert forged.pk != good.pk


def test_a_variant_failing_the_health_check_keeps_the_old_model_and_pauses_the_rollout(fleet):
    agents, _ = fleet
    model, version = make_model()
    good = add_variant(version)
    converge(agents, start(model))

    _, v2 = make_model(version=2)
    add_variant(v2, data=broken_onnx_bytes())
    d = start(model, phases=[1, "100%"], error_threshold=0)
    converge(agents, d, rounds=2)
    d.refresh_from_db()
    assert d.state == DeploymentState.PAUSED and "threshold" in d.state_reason
    failed = d.assignments.get(state=AssignmentState.FAILED)
    assert "health check failed" in failed.error
    assert d.assignments.filter(state=AssignmentState.PENDING).count() == 1  # the next phase waits
    for agent in agents:
        assert agent.current().endswith(f"{good.sha256}.onnx")


def test_abort_with_rollback_restores_every_device(fleet):
    agents, _ = fleet
    model, version = make_model()
    v1 = add_variant(version)
    converge(agents, start(model))
    _, version2 = make_model(version=2)
    v2 = add_variant(version2)
    d2 = start(model)
    converge(agents, d2)
    assert all(a.current().endswith(f"{v2.sha256}.onnx") for a in agents)
    rollouts.abort(None, d2, rollback=True)
    converge(agents, d2, rounds=1)
    assert all(a.current().endswith(f"{v1.sha256}.onnx") for a in agents)
    assert d2.assignments.filter(state=AssignmentState.ROLLED_BACK).count() == 2
