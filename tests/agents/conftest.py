"""Helpers for the agent's tests: a state directory as `enroll` leaves it, and the agent's CLI
run as a real child process (the way systemd runs it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents import state

REPO = Path(__file__).resolve().parents[2]


def closed_port_url() -> str:
    """An http URL on which nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def agent_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["EDGEFLEET_AGENT_CONFIG"] = ""  # never pick up /etc/edgefleet-agent/agent.toml
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=agent_env(**env),
        cwd=REPO,
    )


def start_agent(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agents", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=agent_env(**env),
        cwd=REPO,
    )


def wait_for(predicate, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def enrolled_state_dir(tmp_path) -> Path:
    """A state dir with credentials for a server that does not answer (connection refused)."""
    state_dir = tmp_path / "state"
    state.save_credentials(
        str(state_dir),
        {
            "server": closed_port_url(),
            "device_id": "0b0e6f0c-0000-4000-8000-000000000001",
            "device_token": "efd_test_not_a_real_token",
            "status": "active",
            "name": "test-device",
            "fingerprint": "sha256:test",
            "config": {"telemetry_interval_s": 10, "batch_size": 3},
            "enrolled_at": time.time(),
        },
    )
    return state_dir
