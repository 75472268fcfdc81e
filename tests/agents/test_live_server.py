"""The real agent (CLI and daemon, as child processes) against the real Django server.

Telemetry end-to-end tests (outage, restart while down, exactly-once delivery) join these when
the server's telemetry endpoint exists; the daemon already treats its absence as "server away".
"""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest

from agents import state
from fleet import services
from fleet.models import Device

from .conftest import run_cli, start_agent, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

FAST = (
    "--interval",
    "0.2",
    "--pending-poll",
    "0.3s",
    "--backoff-initial",
    "0.1",
    "--backoff-max",
    "0.5",
)


def test_enroll_stores_credentials_and_the_server_gets_the_inventory(live_server, tmp_path):
    token = services.create_enrollment_token(None, auto_accept=True).token
    state_dir = tmp_path / "state"

    done = run_cli(
        "enroll",
        "--server",
        live_server.url,
        "--state-dir",
        str(state_dir),
        "--name",
        "cam-17",
        EDGEFLEET_AGENT_ENROLLMENT_TOKEN=token,
    )
    assert done.returncode == 0, done.stderr
    creds = json.loads((state_dir / state.CREDENTIALS).read_text())
    assert f"device id: {creds['device_id']}" in done.stdout
    assert "status:    active" in done.stdout
    assert creds["device_token"].startswith("efd_")
    assert creds["config"]["telemetry_interval_s"] > 0
    assert stat.S_IMODE(os.stat(state_dir / state.CREDENTIALS).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700

    device = Device.objects.get(pk=creds["device_id"])
    assert device.name == "cam-17"
    assert device.status == "active"
    assert device.fingerprint == creds["fingerprint"]
    assert device.cpu_cores == os.cpu_count()
    assert device.arch and device.os and device.agent_version == "0.1.0"
    assert device.onnxruntime_version  # probed in a child process
    assert "CPUExecutionProvider" in device.execution_providers

    # The daemon reports the inventory at start; the server accepts it.
    proc = start_agent("--state-dir", str(state_dir), *FAST)
    try:
        wait_for(lambda: (state_dir / state.INVENTORY).exists(), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "inventory reported" in out

    # Enrolling again needs --force, and then finds the same device (same fingerprint).
    again = run_cli(
        "enroll", "--server", live_server.url, "--state-dir", str(state_dir), "--token", token
    )
    assert again.returncode == 1 and "--force" in again.stderr
    forced = run_cli(
        "enroll",
        "--server",
        live_server.url,
        "--state-dir",
        str(state_dir),
        "--token",
        token,
        "--force",
    )
    assert forced.returncode == 0, forced.stderr
    assert (
        json.loads((state_dir / state.CREDENTIALS).read_text())["device_id"] == creds["device_id"]
    )


def test_a_pending_device_waits_then_reports_once_accepted(live_server, tmp_path):
    token = services.create_enrollment_token(None, auto_accept=False).token
    state_dir = tmp_path / "state"
    done = run_cli(
        "enroll", "--server", live_server.url, "--state-dir", str(state_dir), "--token", token
    )
    assert done.returncode == 0, done.stderr
    assert "status:    pending" in done.stdout
    device = Device.objects.get(
        pk=json.loads((state_dir / state.CREDENTIALS).read_text())["device_id"]
    )

    proc = start_agent("--state-dir", str(state_dir), *FAST)
    try:
        wait_for(
            lambda: (state.read_status(str(state_dir)) or {}).get("link") == "pending", timeout=30
        )
        assert not (state_dir / state.INVENTORY).exists()
        services.transition_device(None, device, "accept")
        wait_for(lambda: (state_dir / state.INVENTORY).exists(), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "pending" in out


def test_wrong_enrollment_token_is_refused_clearly(live_server, tmp_path):
    done = run_cli(
        "enroll", "--server", live_server.url, "--state-dir", str(tmp_path), "--token", "eft_wrong"
    )
    assert done.returncode == 1
    assert "enrollment refused (HTTP 401)" in done.stderr
    assert not (tmp_path / state.CREDENTIALS).exists()


def test_a_revoked_token_stops_the_agent_sending(live_server, tmp_path):
    token = services.create_enrollment_token(None, auto_accept=True).token
    state_dir = tmp_path / "state"
    assert (
        run_cli(
            "enroll", "--server", live_server.url, "--state-dir", str(state_dir), "--token", token
        ).returncode
        == 0
    )
    device = Device.objects.get(
        pk=json.loads((state_dir / state.CREDENTIALS).read_text())["device_id"]
    )
    services.revoke_device_credentials(None, device)

    proc = start_agent("--state-dir", str(state_dir), *FAST)
    try:
        wait_for(
            lambda: (state.read_status(str(state_dir)) or {}).get("link") == "gone", timeout=30
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "SERVER REFUSES THIS DEVICE" in out
    assert "Nothing will be sent until the device is enrolled again" in out
