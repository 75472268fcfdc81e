"""Model check and benchmark, run in a child process: ``python -m agents.check_model``.

The daemon never imports onnxruntime; it runs this module and reads one JSON document from its
stdout. A crash, a hang (the daemon's timeout) or a failed comparison all mean "do not switch".

    python -m agents.check_model --model M.onnx [--check CHECK.json] [--runs 20]

``CHECK.json`` is the ``health_check`` of the desired state (base64 .npz inputs and reference
outputs, ``min_cosine``). Exit status 0: loaded, ran and matched; 1: outputs differ; 2: could not
load or run. Output: ``{"ok", "error", "cosine_min", "p50_ms", "p95_ms", "peak_rss_bytes"}``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import resource
import sys
import time


def _unpack(text: str) -> dict:
    import numpy as np

    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _cosine(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return -1.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def check(model_path: str, health: dict | None, runs: int = 20) -> dict:
    import numpy as np
    import onnxruntime as ort

    result: dict = {"ok": False, "error": None, "cosine_min": None}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_path, opts, providers=ort.get_available_providers())
    inputs_meta = session.get_inputs()
    if health and health.get("inputs"):
        inputs, reference = _unpack(health["inputs"]), _unpack(health["outputs"])
        n = int(health.get("samples") or next(iter(inputs.values())).shape[0])
        out_names = [o.name for o in session.get_outputs()]
        worst = 1.0
        for i in range(n):
            outs = session.run(None, {k: v[i] for k, v in inputs.items()})
            for name, value in zip(out_names, outs, strict=False):
                if name in reference:
                    worst = min(worst, _cosine(value, reference[name][i]))
        result["cosine_min"] = round(worst, 6)
        threshold = float(health.get("min_cosine", 0.99))
        if worst < threshold:
            result["error"] = f"health check failed: output cosine {worst:.4f} < {threshold}"
        sample = {k: v[0] for k, v in inputs.items()}
    else:
        sample = {}
        for inp in inputs_meta:
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            dtype = np.float32 if "float" in inp.type else np.int64
            sample[inp.name] = np.zeros(shape, dtype=dtype)
        session.run(None, sample)
    timings = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        session.run(None, sample)
        timings.append((time.perf_counter() - t0) * 1000)
    result["p50_ms"] = round(_percentile(timings, 0.5), 4)
    result["p95_ms"] = round(_percentile(timings, 0.95), 4)
    # ru_maxrss is in KiB on Linux: the child's peak, which is the model's cost plus the runtime.
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["ok"] = result["error"] is None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.check_model")
    parser.add_argument("--model", required=True)
    parser.add_argument("--check", help="JSON file holding the desired state's health_check")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        health = None
        if args.check:
            with open(args.check) as fh:
                health = json.load(fh)
        result = check(args.model, health, args.runs)
    except Exception as exc:  # any failure to load or run is a failed check, reported as such
        print(json.dumps({"ok": False, "error": f"cannot load or run the model: {type(exc).__name__}: {exc}"}))
        return 2
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
