"""Health-check data for a model version: a few inputs and the original model's outputs on them,
computed with onnxruntime when a deployment starts. Agents run a new variant on the same inputs
in a child process and compare (cosine similarity per output) before switching to it.

Inputs come from a dataset of the model when there is one (its first samples), else from a fixed
seed. They are kept small (at most ``MAX_SAMPLES`` samples and about ``MAX_INPUT_BYTES``), since
they travel in every device's desired state.
"""

from __future__ import annotations

import base64
import io
import logging

from django.db import IntegrityError

from .models import HealthCheck

log = logging.getLogger(__name__)

MAX_SAMPLES = 4
MAX_INPUT_BYTES = 64 * 1024
_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def pack(arrays: dict) -> str:
    """Arrays → base64 of a compressed .npz (what the desired state carries)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def unpack(text: str) -> dict:
    import numpy as np

    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _synthetic_sample(session, rng) -> dict:
    import numpy as np

    sample = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        dtype = _DTYPES.get(inp.type, "float32")
        if dtype.startswith("float"):
            sample[inp.name] = rng.random(shape).astype(dtype)
        elif dtype == "bool":
            sample[inp.name] = np.zeros(shape, dtype=bool)
        else:
            sample[inp.name] = np.zeros(shape, dtype=dtype)
    return sample


def _dataset_samples(version, names: list[str], limit: int) -> list[dict]:
    """Samples of the model's newest dataset that has every input (see DESIGN.md's format)."""
    import numpy as np

    from compression import storage

    for dataset in version.model.datasets.order_by("-created_at")[:3]:
        try:
            with np.load(storage.path_of(dataset.file), allow_pickle=False) as data:
                if not all(n in data.files for n in names):
                    continue
                n = min(limit, min(len(data[name]) for name in names))
                return [{name: np.asarray(data[name][i]) for name in names} for i in range(n)]
        except (OSError, ValueError) as exc:
            log.warning("health check: cannot read dataset %s: %s", dataset.pk, exc)
    return []


def build(version) -> tuple[dict, dict, int]:
    """(inputs, outputs, samples): inputs stacked per name on a new leading axis, like a
    dataset; outputs of the original model likewise."""
    import numpy as np
    import onnxruntime as ort

    from compression import storage

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(storage.path_of(version.file)), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    samples = _dataset_samples(version, names, MAX_SAMPLES)
    if not samples:
        rng = np.random.default_rng(0)
        samples = [_synthetic_sample(session, rng) for _ in range(MAX_SAMPLES)]
    per_sample = sum(a.nbytes for a in samples[0].values())
    samples = samples[: max(1, min(len(samples), MAX_INPUT_BYTES // max(per_sample, 1)))]
    outputs = [session.run(None, s) for s in samples]
    out_names = [o.name for o in session.get_outputs()]
    inputs = {n: np.stack([s[n] for s in samples]) for n in names}
    outs = {n: np.stack([o[i] for o in outputs]) for i, n in enumerate(out_names)}
    return inputs, outs, len(samples)


def ensure_health_check(version) -> HealthCheck:
    """The version's health check, built on first use. A model that cannot be run here gets an
    empty check with the reason (agents then only check that the variant loads and runs)."""
    existing = HealthCheck.objects.filter(version=version).first()
    if existing is not None:
        return existing
    try:
        inputs, outputs, n = build(version)
        fields = {"inputs_npz": pack(inputs), "outputs_npz": pack(outputs), "samples": n}
    except Exception as exc:  # onnxruntime raises its own types; any failure means "no check"
        log.warning("health check for %s could not be built: %s", version, exc)
        fields = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    try:
        return HealthCheck.objects.create(version=version, **fields)
    except IntegrityError:  # built concurrently by another process
        return HealthCheck.objects.get(version=version)
