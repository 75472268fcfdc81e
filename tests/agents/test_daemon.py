"""The daemon as systemd runs it: a child process, signals, the buffer while the server is away,
its memory, and what it must never import."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil

from agents import state
from agents.buffer import open_readonly_stats

from .conftest import agent_env, start_agent, wait_for

FAST = (
    "--interval",
    "0.1",
    "--backoff-initial",
    "0.05",
    "--backoff-max",
    "0.2",
    "--inventory-interval",
    "1h",
    "--log-level",
    "debug",
)


def buffered(state_dir) -> int:
    stats = open_readonly_stats(str(state_dir / state.BUFFER))
    return stats["count"] if stats else 0


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


def test_buffers_while_the_server_is_away_and_stops_cleanly(enrolled_state_dir):
    proc = start_agent("--state-dir", str(enrolled_state_dir), *FAST)
    try:
        wait_for(lambda: buffered(enrolled_state_dir) >= 10)
        status = wait_for(
            lambda: (
                (state.read_status(str(enrolled_state_dir)) or {}).get("link") == "offline"
                and state.read_status(str(enrolled_state_dir))
            )
        )
        assert status["pid"] == proc.pid
        assert "refused" in status["last_error"]
        assert state.agent_running(str(enrolled_state_dir)) is True
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "server unreachable" in out
    assert "stopped;" in out

    # Stopped: the queue is on disk and checkpointed, the lock is free, seq continues next time.
    stats = open_readonly_stats(str(enrolled_state_dir / state.BUFFER))
    assert stats["count"] >= 10 and stats["dropped_total"] == 0
    assert (
        not (enrolled_state_dir / (state.BUFFER + "-wal")).exists()
        or (enrolled_state_dir / (state.BUFFER + "-wal")).stat().st_size == 0
    )
    assert state.agent_running(str(enrolled_state_dir)) is False
    final = state.read_status(str(enrolled_state_dir))
    assert final["running"] is False and final["buffered"] == stats["count"]

    proc = start_agent("--state-dir", str(enrolled_state_dir), *FAST)
    try:
        wait_for(lambda: buffered(enrolled_state_dir) > stats["count"])
    finally:
        stop(proc, signal.SIGINT)
    assert proc.returncode == 0
    after = open_readonly_stats(str(enrolled_state_dir / state.BUFFER))
    assert after["last_seq"] > stats["last_seq"] and after["count"] == after["last_seq"]


def test_a_second_daemon_on_the_same_state_dir_refuses_to_start(enrolled_state_dir):
    first = start_agent("--state-dir", str(enrolled_state_dir), *FAST)
    try:
        wait_for(lambda: state.agent_running(str(enrolled_state_dir)))
        second = subprocess.run(
            [sys.executable, "-m", "agents", "run", "--state-dir", str(enrolled_state_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            env=agent_env(),
        )
        assert second.returncode == 1
        assert "already running" in second.stderr
    finally:
        stop(first)


def test_sighup_reloads_the_config_file(enrolled_state_dir, tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('interval = "0.1s"\nbatch_size = 3\n')
    proc = start_agent(
        "--state-dir", str(enrolled_state_dir), "--config", str(config), "--log-level", "debug"
    )
    try:
        wait_for(lambda: (state.read_status(str(enrolled_state_dir)) or {}).get("batch_size") == 3)
        config.write_text('interval = "0.2s"\nbatch_size = 9\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (state.read_status(str(enrolled_state_dir)) or {}).get("batch_size") == 9)
        assert state.read_status(str(enrolled_state_dir))["interval_s"] == 0.2
    finally:
        out = stop(proc)
    assert "reloaded" in out


def test_daemon_rss_stays_small(enrolled_state_dir):
    """The daemon's resident memory after start-up and a few dozen sampling cycles."""
    proc = start_agent("--state-dir", str(enrolled_state_dir), *FAST)
    try:
        wait_for(lambda: buffered(enrolled_state_dir) >= 30)
        rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        stop(proc)
    print(
        f"\nagent daemon RSS after {buffered(enrolled_state_dir)} samples: "
        f"{rss / 2**20:.1f} MiB (goal 20 MiB)"
    )
    assert rss < 40 * 2**20


def test_daemon_does_not_load_what_only_deployments_need(enrolled_state_dir):
    """hashlib maps OpenSSL's libcrypto (3.5 MiB of RSS) and shutil brings bz2 and lzma: the
    deployment code imports them only while it installs a model, and the CLI keeps argparse
    from importing shutil. Checked on the running daemon's memory map, so that an import
    anywhere (a module top, argparse, a job's first run) is caught."""
    proc = start_agent("--state-dir", str(enrolled_state_dir), *FAST, "--deploy-poll", "0.1s")
    try:
        wait_for(lambda: buffered(enrolled_state_dir) >= 10)
        wait_for(lambda: (state.read_status(str(enrolled_state_dir)) or {}).get("deploy_error"))
        with open(f"/proc/{proc.pid}/maps") as fh:
            libraries = {line.split()[-1].rsplit("/", 1)[-1] for line in fh if "/" in line}
    finally:
        stop(proc)
    loaded = sorted(
        name
        for name in libraries
        if name.startswith(("libcrypto", "libssl", "liblzma", "libbz2", "_hashlib", "_lzma", "_bz2"))
    )
    assert loaded == []


ISOLATION = """
import json, sys, time
import agents, agents.backoff, agents.buffer, agents.cli, agents.client, agents.config
import agents.daemon, agents.inventory, agents.jobs, agents.probe, agents.sampler, agents.state
import agents.artifacts, agents.models_job  # deployment jobs run in the daemon process too
sampler = agents.sampler.Sampler("/")
sampler.sample()
inventory = agents.inventory.collect("/")  # probes onnxruntime, in a child process
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("django", "onnxruntime", "numpy", "requests", "onnx"))
print(json.dumps({"heavy": heavy, "inventory": inventory}))
"""


def test_agent_modules_never_import_django_or_onnxruntime():
    done = subprocess.run(
        [sys.executable, "-c", ISOLATION],
        capture_output=True,
        text=True,
        timeout=120,
        env=agent_env(),
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["heavy"] == []
    # ...while the probe child did find onnxruntime, which this environment has installed.
    assert answer["inventory"]["onnxruntime_version"]
    assert "CPUExecutionProvider" in answer["inventory"]["execution_providers"]
