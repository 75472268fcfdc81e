"""The test models themselves: real classifiers, fast to build."""

import numpy as np
import onnxruntime as ort

from tests.compression.engine import models


def _accuracy(model, X, y) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": X})
    return float((logits.argmax(axis=1) == y).mean())


def test_the_mlp_classifies_digits(digits):
    _, X_test, _, y_test = digits
    assert _accuracy(models.build_digits_mlp(), X_test, y_test) >= 0.95


def test_the_cnn_classifies_digits_with_fixed_filters_and_a_trained_head(digits):
    _, X_test, _, y_test = digits
    model = models.build_digits_cnn()
    assert {n.op_type for n in model.graph.node} >= {"Conv", "Relu", "Gemm"}
    assert _accuracy(model, X_test.reshape(-1, 1, 8, 8), y_test) >= 0.9


def test_the_if_model_keeps_its_weights_inside_the_branches(digits):
    _, X_test, _, y_test = digits
    model = models.build_if_model()
    assert not any(n.op_type == "MatMul" for n in model.graph.node)
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    assert all(len(attr.g.initializer) == 4 for attr in if_node.attribute)
    assert _accuracy(model, X_test, y_test) >= 0.9


def test_the_constant_weights_model_has_no_initializers(digits):
    _, X_test, _, y_test = digits
    model = models.build_constant_weights_model()
    assert len(model.graph.initializer) == 0
    assert sum(n.op_type == "Constant" for n in model.graph.node) == 6
    assert _accuracy(model, X_test, y_test) >= 0.95


def test_dataset_npz_writes_one_sample_per_row_with_a_batch_axis(tmp_path, digits):
    _, X_test, _, y_test = digits
    path = models.dataset_npz(tmp_path / "d.npz", X_test, y_test, "x")
    with np.load(path) as data:
        assert data["x"].shape == (len(X_test), 1, 64)
        assert data["labels"].shape == (len(X_test),)
