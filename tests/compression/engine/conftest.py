"""Model files built once per test session from scikit-learn's digits (see models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compression.engine import models

# Toy models run in ~20 microseconds, where a few extra nodes of overhead decide the latency
# verdict; tests about fidelity, size and artifacts use few runs and a wide latency slack,
# and the latency rule itself is tested on its own (test_verify.py).
FAST = {"latency_runs": 20, "latency_warmup": 2, "latency_slack": 10.0}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits():
    return models.digits_data()


@pytest.fixture(scope="session")
def mlp_path(model_dir) -> Path:
    path = model_dir / "mlp.onnx"
    models.build_digits_mlp(path=path)
    return path


@pytest.fixture(scope="session")
def cnn_path(model_dir) -> Path:
    path = model_dir / "cnn.onnx"
    models.build_digits_cnn(path=path)
    return path


@pytest.fixture(scope="session")
def if_path(model_dir) -> Path:
    path = model_dir / "if.onnx"
    models.build_if_model(path=path)
    return path


@pytest.fixture(scope="session")
def const_path(model_dir) -> Path:
    path = model_dir / "const.onnx"
    models.build_constant_weights_model(path=path)
    return path


@pytest.fixture(scope="session")
def mlp_dataset(model_dir, digits) -> Path:
    _, X_test, _, y_test = digits
    return models.dataset_npz(model_dir / "mlp.npz", X_test, y_test, "x")


@pytest.fixture(scope="session")
def cnn_dataset(model_dir, digits) -> Path:
    _, X_test, _, y_test = digits
    return models.dataset_npz(model_dir / "cnn.npz", X_test.reshape(-1, 1, 8, 8), y_test, "x")
