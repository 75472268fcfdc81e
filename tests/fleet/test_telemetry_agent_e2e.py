"""The real agent against a real server that goes away and comes back: every sample arrives
exactly once, and a full buffer drops the oldest and says how many.

The server is gunicorn in a child process on the test database, so the test can stop it and start
it again on the same port (pytest-django's live_server cannot be restarted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fleet import services
from fleet.models import DevicePresence, TelemetrySample
from tests.agents.conftest import run_cli, start_agent, wait_for
from tests.conftest import _worker_database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FAST = ("--interval", "0.2", "--batch-size", "2", "--backoff-initial", "0.1", "--backoff-max", "0.4",
        "--drain-rate", "50", "--drain-batch-size", "50", "--jitter", "0",
        # gunicorn opens its port before its worker has loaded Django (10-20 s on a loaded host):
        # a request sent meanwhile waits in the listen backlog and is served later. With the
        # default 10 s timeout the agent gave up on such a request, so the server stored samples
        # whose answer the agent never saw, which the full buffer then dropped and counted as
        # dropped. Wait for every answer: no answer is ever lost in these tests.
        "--timeout", "120s")


class Server:
    """gunicorn serving the test database on a fixed port; stop() and start() at will."""

    def __init__(self, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = None

    def start(self):
        env = {**os.environ, "DATABASE_URL": _worker_database_url(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "edgefleet.wsgi", "-b", f"127.0.0.1:{self.port}",
             "-w", "1", "--graceful-timeout", "30"],  # a request in flight is answered, not killed
            env=env, cwd=REPO, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )

        def up():  # a worker answers (the port is open before the worker has loaded Django)
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(up, timeout=60, every=0.2)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.log")
    srv.start()
    yield srv
    srv.stop()


def _status(state_dir: Path) -> dict:
    path = state_dir / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _stored(device_id) -> list[int]:
    return sorted(TelemetrySample.objects.filter(device_id=device_id).values_list("seq", flat=True))


def _enroll(server, state_dir) -> str:
    token = services.create_enrollment_token(None, auto_accept=True).token
    done = run_cli("enroll", "--server", server.url, "--state-dir", str(state_dir), "--name", "e2e", "--timeout", "30s",
                   EDGEFLEET_AGENT_ENROLLMENT_TOKEN=token)
    assert done.returncode == 0, done.stderr
    return json.loads((state_dir / "credentials.json").read_text())["device_id"]


def _stop(agent) -> str:
    agent.send_signal(signal.SIGTERM)
    out, _ = agent.communicate(timeout=20)
    assert agent.returncode == 0, out
    return out


def test_every_sample_arrives_exactly_once_across_an_outage_and_a_restart(server, tmp_path):
    state_dir = tmp_path / "state"
    device_id = _enroll(server, state_dir)
    agent = start_agent("--state-dir", str(state_dir), *FAST)
    try:
        wait_for(lambda: len(_stored(device_id)) >= 4, timeout=30)
        server.stop()
        wait_for(lambda: _status(state_dir).get("buffered", 0) >= 4, timeout=20)
        _stop(agent)  # restarted while the server is down
        agent = start_agent("--state-dir", str(state_dir), *FAST)
        wait_for(lambda: _status(state_dir).get("buffered", 0) >= 8, timeout=20)
        server.start()
        wait_for(lambda: _status(state_dir).get("link") == "ok"
                 and _status(state_dir).get("buffered", 99) <= 1, timeout=30)
    finally:
        out = _stop(agent) if agent.poll() is None else ""
    status = _status(state_dir)
    stored = _stored(device_id)
    acked = status["acked_seq"]
    assert stored == list(range(1, len(stored) + 1)), out[-2000:]  # no gap, no duplicate
    assert len(stored) >= acked >= status["last_seq"] - status["buffered"]
    assert len(stored) >= 12
    assert status["dropped_total"] == 0
    assert not DevicePresence.objects.filter(device_id=device_id, dropped_samples__gt=0).exists()


def test_a_tiny_buffer_drops_the_oldest_and_reports_how_many(server, tmp_path):
    state_dir = tmp_path / "state"
    device_id = _enroll(server, state_dir)
    agent = start_agent("--state-dir", str(state_dir), *FAST, "--buffer-max-bytes", "2KiB")
    try:
        wait_for(lambda: len(_stored(device_id)) >= 2, timeout=30)
        server.stop()
        wait_for(lambda: _status(state_dir).get("dropped_total", 0) >= 5, timeout=30)
        server.start()
        wait_for(lambda: _status(state_dir).get("link") == "ok"
                 and _status(state_dir).get("dropped_unreported", 1) == 0
                 and _status(state_dir).get("buffered", 99) <= 1, timeout=30)
    finally:
        out = _stop(agent) if agent.poll() is None else ""
    status = _status(state_dir)
    stored = _stored(device_id)
    dropped = DevicePresence.objects.get(device_id=device_id).dropped_samples
    assert dropped == status["dropped_total"] > 0, out[-3000:]
    missing = set(range(1, max(stored) + 1)) - set(stored)
    assert len(missing) == dropped, (sorted(missing), out[-3000:])  # exactly the dropped ones are absent...
    assert max(missing) < max(stored) - 1  # ...and they were the oldest of the outage
