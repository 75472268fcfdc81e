"""Work that needs heavy libraries, run in a child process: ``python -m agents.probe COMMAND``.

The daemon never imports onnxruntime (tens of megabytes, native threads); it starts this module
with a timeout, reads one JSON document from stdout and lets the child's memory go with it.
Model health checks and on-device benchmarks (deployments) will be further commands here.

Commands:
    runtime    {"onnxruntime_version": str | null, "execution_providers": [str], "error"?: str}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def probe_runtime() -> dict:
    try:
        import onnxruntime
    except Exception as exc:  # noqa: BLE001 - absent or broken: report, do not fail
        return {
            "onnxruntime_version": None,
            "execution_providers": [],
            "error": f"{type(exc).__name__}: {exc}"[:300],
        }
    return {
        "onnxruntime_version": getattr(onnxruntime, "__version__", None),
        "execution_providers": list(onnxruntime.get_available_providers()),
    }


COMMANDS = {"runtime": probe_runtime}


def run_probe(command: str, timeout: float = 60.0) -> dict:
    """Run ``python -m agents.probe COMMAND`` in a child process; its JSON answer, or
    ``{"error": ...}`` when the child fails, hangs or prints something that is not JSON."""
    # The child must find this very package, wherever the daemon was started from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agents.probe", command],
            capture_output=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"probe {command} timed out after {timeout:g} s"}
    except OSError as exc:
        return {"error": f"probe {command} could not start: {exc}"}
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {"error": f"probe {command} exited with {done.returncode}: {tail[0][:300]}"}
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"probe {command} printed no JSON"}
    return answer if isinstance(answer, dict) else {"error": f"probe {command}: not an object"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: python -m agents.probe {{{','.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    # Library chatter goes to stderr; stdout carries exactly one JSON document.
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    try:
        answer = COMMANDS[argv[0]]()
    finally:
        sys.stdout = real_stdout
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
