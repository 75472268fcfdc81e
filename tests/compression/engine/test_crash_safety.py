"""A worker killed with SIGKILL in the middle of ``compress`` leaves no half-written variant.

Variants are written inside ``out_dir/.work-<host>-<pid>-*`` and moved into place with
``os.replace`` only when complete, so every final-named file (``<sha256>.onnx`` or
``rejected-<sha256>.onnx``) in ``out_dir`` is whole: its name is its content's sha256. The next
run on the same host removes the dead run's work folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from compression.engine import compress
from tests.compression.engine.conftest import FAST

REPO = Path(__file__).resolve().parents[3]
FINAL = re.compile(r"(rejected-)?([0-9a-f]{64})\.onnx")

CHILD = textwrap.dedent(
    """
    import sys
    from compression.engine import compress

    model, dataset, out = sys.argv[1:4]

    def progress(fraction, message):
        # The engine redirects sys.stdout into its log while a recipe runs: use the real one.
        sys.__stdout__.write(f"{fraction:.4f} {message}\\n")
        sys.__stdout__.flush()

    compress(model, "auto", dataset=dataset, out_dir=out, progress=progress,
             options={"latency_runs": 3000, "latency_warmup": 2, "latency_slack": 10.0,
                      "auto_recipes": ["int8-dynamic", "fp16"]})
    print("FINISHED", flush=True)
    """
)


def _kill_when(model: Path, dataset: Path, out: Path, marker: str, nth: int) -> list[str]:
    """Run compress in a child and SIGKILL it when ``marker`` appears for the ``nth`` time."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(model), str(dataset), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen, lines = 0, []
    try:
        for line in child.stdout:
            lines.append(line.strip())
            if marker in line:
                seen += 1
                if seen == nth:
                    os.kill(child.pid, signal.SIGKILL)
                    break
    finally:
        child.stdout.close()
        if child.poll() is None and seen < nth:
            child.kill()
        child.wait(timeout=60)
    assert seen == nth, f"never saw {marker!r} {nth} times: {lines[-5:]}"
    assert child.returncode == -signal.SIGKILL
    assert "FINISHED" not in lines
    return lines


def _check_out_dir(out: Path) -> list[Path]:
    finals = []
    for entry in out.iterdir():
        if entry.name.startswith(".work-") and entry.is_dir():
            continue  # scratch of the killed run, never a deliverable
        match = FINAL.fullmatch(entry.name)
        assert match, f"unexpected file in out_dir after a crash: {entry.name}"
        digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        assert digest == match.group(2), f"{entry.name} is not whole (sha256 {digest})"
        onnx.checker.check_model(str(entry), full_check=True)
        finals.append(entry)
    return finals


@pytest.mark.parametrize(
    "marker, nth",
    [("verifying", 2), ("int8-dynamic: applying", 5)],
    ids=["while-verifying", "while-applying"],
)
def test_sigkill_mid_compress_leaves_no_partial_variant(
    tmp_path, mlp_path, mlp_dataset, marker, nth
):
    out = tmp_path / "out"
    _kill_when(mlp_path, mlp_dataset, out, marker, nth)

    finals = _check_out_dir(out)
    assert finals, "the first variant finished before the kill and must be in place"
    leftovers = [p for p in out.iterdir() if p.name.startswith(".work-")]
    assert len(leftovers) == 1

    # The next run on this host cleans up the dead run's scratch and keeps the finished work.
    report = compress(mlp_path, "fp16", dataset=mlp_dataset, out_dir=out, options=FAST)
    assert not [p for p in out.iterdir() if p.name.startswith(".work-")]
    assert "removed 1 work folder(s) left by killed runs" in report.notes
    assert all(p.exists() for p in finals)
    _check_out_dir(out)
