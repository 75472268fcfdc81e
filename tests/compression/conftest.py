"""Fixtures for the registry and job tests: small real models (built from scikit-learn's digits
by tests/compression/engine/models.py), an isolated ARTIFACT_ROOT, and upload helpers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.compression.engine import models

# Toy models run in microseconds; few latency runs and a wide slack keep jobs fast and stable
# (the latency rule itself is tested in the engine's tests).
FAST = {"latency_runs": 20, "latency_warmup": 2, "latency_slack": 10.0}


@pytest.fixture(autouse=True)
def artifact_root(request, settings, tmp_path):
    """Each test gets its own ARTIFACT_ROOT, except tests that use the real worker, which reads
    the process's settings (and so the default root) in another process."""
    if "celery_worker_process" not in request.fixturenames:
        settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    return Path(settings.ARTIFACT_ROOT)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("registry-models")
    files = {"mlp": base / "mlp.onnx", "cnn": base / "cnn.onnx"}
    models.build_digits_mlp(path=files["mlp"])
    models.build_digits_cnn(path=files["cnn"])
    _, X_test, _, y_test = models.digits_data()
    files["mlp_npz"] = models.dataset_npz(base / "mlp.npz", X_test, y_test, "x")
    # A model whose second input dim is symbolic: no latency without input shapes.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "features"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "features"])],
    )
    dyn = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dyn.ir_version = 8
    files["dynamic"] = base / "dynamic.onnx"
    onnx.save(dyn, str(files["dynamic"]))
    return files


def upload(client, model: str, path: Path | bytes, name: str | None = None, **extra):
    """POST a file as multipart to the model's versions endpoint."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    handle = io.BytesIO(data)
    handle.name = name or (Path(path).name if not isinstance(path, bytes) else "model.onnx")
    return client.post(f"/api/v1/models/{model}/versions/", {"file": handle, **extra},
                       format="multipart")


def upload_dataset(client, model: str, arrays: dict[str, np.ndarray], name="data.npz", **extra):
    handle = io.BytesIO()
    np.savez(handle, **arrays)
    handle.seek(0)
    handle.name = name
    return client.post(f"/api/v1/models/{model}/datasets/", {"file": handle, **extra},
                       format="multipart")


@pytest.fixture
def registered(operator_api):
    """A model named 'digits' registered by the operator."""
    resp = operator_api.post("/api/v1/models/", {"name": "digits", "description": "MLP"})
    assert resp.status_code == 201, resp.content
    return resp.json()


@pytest.fixture
def mlp_version(operator_api, registered, model_files):
    resp = upload(operator_api, "digits", model_files["mlp"])
    assert resp.status_code == 201, resp.content
    return resp.json()
