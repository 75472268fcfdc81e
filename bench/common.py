"""Helpers shared by the benchmark scripts (plain Python: subprocess, sockets, psutil)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def sh(*args, env=None, check=True, capture=True) -> str:
    """Run a command in the repository; exit with its output when it fails and ``check``."""
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=capture, text=True, check=False)
    if check and done.returncode:
        raise SystemExit(
            f"{' '.join(map(str, args))} failed:\n{(done.stdout or '')[-3000:]}\n{(done.stderr or '')[-3000:]}"
        )
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU of a process and all its children, in seconds."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
