"""`edgefleet-agent` as an operator meets it: --help, status, file modes, not-enrolled exits."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from agents import state
from agents.buffer import Buffer
from agents.config import SETTINGS

from .conftest import run_cli


def test_help_explains_every_command_and_option():
    top = run_cli("--help")
    assert top.returncode == 0
    for command in ("enroll", "run", "status"):
        assert command in top.stdout
    assert "EDGEFLEET_AGENT_" in top.stdout

    run = run_cli("run", "--help").stdout
    for setting in SETTINGS:
        assert "--" + setting.name.replace("_", "-") in run
        assert "EDGEFLEET_AGENT_" + setting.name.upper() in run
    enroll = run_cli("enroll", "--help").stdout
    for option in ("--server", "--token", "--state-dir", "--name", "--force", "--ca-file"):
        assert option in enroll
    assert "--json" in run_cli("status", "--help").stdout


def test_console_script_module_entry_prints_version():
    done = run_cli("--version")
    assert done.returncode == 0 and "edgefleet-agent 0.1.0" in done.stdout


def test_status_on_an_empty_state_dir(tmp_path):
    done = run_cli("status", "--state-dir", str(tmp_path / "nothing-here"))
    assert done.returncode == 3
    assert "not enrolled" in done.stdout
    assert not (tmp_path / "nothing-here").exists()  # looking does not create anything

    as_json = run_cli("status", "--json", "--state-dir", str(tmp_path))
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout)["enrolled"] is False


def test_status_on_a_populated_state_dir(enrolled_state_dir):
    buf = Buffer(str(enrolled_state_dir / state.BUFFER), max_bytes=600)
    ts = float(int(time.time()))  # fixed width: every sample is 186 bytes, three fit in 600
    for _ in range(5):
        buf.append({"ts": ts, "cpu_percent": 3.0, "pad": "x" * 100})
    buf.close()
    state.write_status(
        str(enrolled_state_dir),
        {
            "device_id": "0b0e6f0c-0000-4000-8000-000000000001",
            "last_report_at": time.time() - 42,
            "link": "ok",
        },
    )

    done = run_cli("status", "--state-dir", str(enrolled_state_dir))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "0b0e6f0c-0000-4000-8000-000000000001" in out
    assert "http://127.0.0.1:" in out
    assert "not running" in out
    assert "(42 s ago)" in out or "(43 s ago)" in out
    assert "buffered samples:     3" in out  # 600 bytes hold three of these samples
    assert "dropped samples:      2 in total, 2 not yet reported" in out

    doc = json.loads(run_cli("status", "--json", "--state-dir", str(enrolled_state_dir)).stdout)
    assert (doc["buffered"], doc["dropped_total"], doc["dropped_unreported"]) == (3, 2, 2)
    assert doc["agent_running"] is False


def test_credentials_file_is_0600_in_a_0700_dir(tmp_path):
    state_dir = tmp_path / "fresh"
    old = os.umask(0o022)
    try:
        path = state.save_credentials(
            str(state_dir), {"server": "http://x", "device_id": "d", "device_token": "efd_secret"}
        )
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert state.load_credentials(str(state_dir))["device_token"] == "efd_secret"
    assert not [p for p in os.listdir(state_dir) if p.endswith(".tmp")]


def test_enroll_refuses_to_overwrite_credentials_without_force(enrolled_state_dir):
    done = run_cli(
        "enroll",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "--state-dir",
        str(enrolled_state_dir),
    )
    assert done.returncode == 1
    assert "already enrolled" in done.stderr and "--force" in done.stderr


def test_enroll_reports_an_unreachable_server_clearly(tmp_path):
    from .conftest import closed_port_url

    done = run_cli(
        "enroll",
        "--server",
        closed_port_url(),
        "--token",
        "t",
        "--state-dir",
        str(tmp_path / "s"),
        "--timeout",
        "2s",
    )
    assert done.returncode == 1
    assert "cannot reach the server" in done.stderr and "refused" in done.stderr
    assert not (tmp_path / "s" / state.CREDENTIALS).exists()


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://host:99999"])
def test_enroll_rejects_bad_server_urls(tmp_path, url):
    done = run_cli("enroll", "--server", url, "--token", "t", "--state-dir", str(tmp_path))
    assert done.returncode == 2, done.stderr


def test_run_without_enrollment_exits_with_ex_config(tmp_path):
    done = run_cli("run", "--state-dir", str(tmp_path))
    assert done.returncode == 78  # the unit's RestartPreventExitStatus
    assert "not enrolled" in done.stderr


def test_bad_setting_is_a_usage_error(enrolled_state_dir):
    done = run_cli("run", "--state-dir", str(enrolled_state_dir), "--interval", "soon")
    assert done.returncode == 2
    assert "option --interval" in done.stderr
