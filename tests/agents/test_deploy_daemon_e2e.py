"""The whole agent daemon (`edgefleet-agent run` as a child process, the way systemd runs it)
against a live test server converges on a deployment: desired state → download → verify →
child check → `current` symlink → installed report; then follows a rollback to the kept version.

Unlike tests/agents/test_deploy_e2e.py (which drives ``DeployJob`` by hand), nothing here calls
agent code in the test process: only the CLI, its config (environment) and the state directory.
"""

from __future__ import annotations

import json
import os
import signal

import onnxruntime as ort
import pytest

from fleet import rollouts, services
from fleet.models import AssignmentState, Deployment, DeploymentState, Device, DeviceAssignment
from tests.agents.conftest import run_cli, start_agent, wait_for
from tests.fleet.deploy_helpers import add_variant, artifact_root, make_model  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("artifact_root"),
              pytest.mark.slow]
FAST = ("--interval", "0.5", "--batch-size", "2", "--backoff-initial", "0.1", "--backoff-max", "0.5",
        "--jitter", "0")
DEPLOY_ENV = {"EDGEFLEET_AGENT_DEPLOY_POLL": "0.3", "EDGEFLEET_AGENT_DEPLOY_CHECK_TIMEOUT": "60s"}


def _enroll(url: str, state_dir) -> Device:
    token = services.create_enrollment_token(None, auto_accept=True).token
    done = run_cli("enroll", "--server", url, "--state-dir", str(state_dir), "--name", "daemon-e2e",
                   "--timeout", "30s", EDGEFLEET_AGENT_ENROLLMENT_TOKEN=token)
    assert done.returncode == 0, done.stderr
    device_id = json.loads((state_dir / "credentials.json").read_text())["device_id"]
    device = Device.objects.get(pk=device_id)
    device.labels = {"site": "lab"}
    device.save(update_fields=["labels"])
    return device


def _assignment(d: Deployment, device: Device) -> DeviceAssignment:
    return DeviceAssignment.objects.get(deployment=d, device=device)


def _deploy(model) -> Deployment:
    d = Deployment.objects.create(model=model, target_kind="labels", target_labels={"site": "lab"},
                                  phases=["100%"], soak_seconds=0, error_threshold=0)
    return rollouts.start(None, d)


def test_the_agent_daemon_converges_on_a_deployment_and_follows_a_rollback(live_server, tmp_path):
    state_dir = tmp_path / "state"
    device = _enroll(live_server.url, state_dir)
    model, version = make_model()
    v1 = add_variant(version)
    d1 = _deploy(model)
    current = state_dir / "models" / "digits" / "current"

    agent = start_agent("--state-dir", str(state_dir), *FAST, **DEPLOY_ENV)
    try:
        def installed(d):
            a = _assignment(d, device)
            assert a.state not in (AssignmentState.FAILED,), a.error
            return a.state == AssignmentState.INSTALLED

        wait_for(lambda: installed(d1), timeout=90, every=0.2)
        assert os.path.realpath(current).endswith(f"versions/{v1.sha256}.onnx")
        session = ort.InferenceSession(os.path.realpath(current), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].name == "x"
        a1 = _assignment(d1, device)
        assert a1.benchmark_p50_ms > 0 and a1.peak_rss_bytes > 0
        states = list(a1.reports.order_by("received_at", "id").values_list("state", flat=True))
        assert states[0] == "downloading" and states[-3:] == ["verifying", "checking", "installed"]
        assert (state_dir / "signing-key.json").exists()  # the server key was pinned
        assert not list((state_dir / "models" / ".downloads").iterdir())  # no .part left behind
        assert rollouts.advance(d1.pk) == "completed"

        # A second version, then a rollback: the daemon switches back to the kept file at once.
        _, version2 = make_model(version=2)
        v2 = add_variant(version2)
        d2 = _deploy(model)
        wait_for(lambda: installed(d2), timeout=90, every=0.2)
        assert os.path.realpath(current).endswith(f"versions/{v2.sha256}.onnx")
        assert os.path.realpath(state_dir / "models" / "digits" / "previous").endswith(f"{v1.sha256}.onnx")
        rollouts.roll_back(None, d2)
        wait_for(lambda: _assignment(d2, device).state == AssignmentState.ROLLED_BACK, timeout=60, every=0.2)
        assert os.path.realpath(current).endswith(f"versions/{v1.sha256}.onnx")
        assert Deployment.objects.get(pk=d2.pk).state == DeploymentState.ROLLED_BACK
    finally:
        agent.send_signal(signal.SIGTERM)
        out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 0, out[-3000:]
    assert "now running" in out and "switched back to kept version" in out, out[-3000:]
