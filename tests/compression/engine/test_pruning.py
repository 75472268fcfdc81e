"""Magnitude and structured pruning on the digits MLP/CNN and on small hand-built graphs.

The recipes are called directly (the engine verifies variants separately); every variant is
checked with onnx.checker and run in onnxruntime here.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine.base import EngineError, RecipeContext, RecipeNotApplicable
from compression.engine.recipes import prune_magnitude, prune_structured
from tests.compression.engine import models


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    dot = (a * b).sum(axis=1)
    return float((dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _prune(recipe, src: Path, tmp_path: Path, params: dict, calibration=None):
    out = tmp_path / f"variant-{len(list(tmp_path.iterdir()))}.onnx"
    outcome = recipe.apply(
        RecipeContext(model_path=src, out_path=out, params=params, calibration=calibration)
    )
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out, outcome


@pytest.fixture
def mlp(tmp_path) -> Path:
    return _save(models.build_digits_mlp(), tmp_path / "mlp.onnx")


@pytest.fixture
def cnn(tmp_path) -> Path:
    return _save(models.build_digits_cnn(), tmp_path / "cnn.onnx")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _digits(kind: str):
    X_train, X_test, _, y_test = models.digits_data()
    if kind == "cnn":
        return X_train.reshape(-1, 1, 1, 8, 8), X_test.reshape(-1, 1, 8, 8), y_test
    return X_train[:, None, :], X_test, y_test


# --- magnitude pruning -------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_magnitude_pruning_hits_the_sparsity_target(mlp, tmp_path, scope, sparsity):
    out, outcome = _prune(prune_magnitude, mlp, tmp_path, {"sparsity": sparsity, "scope": scope})

    weights = _weights(out)
    matrices = [weights["fc0.weight"], weights["fc1.weight"], weights["fc2.weight"]]
    zeros = sum(int((w == 0).sum()) for w in matrices) / sum(w.size for w in matrices)
    assert zeros == pytest.approx(sparsity, abs=0.01)
    assert outcome.extra["sparsity"] == pytest.approx(sparsity, abs=0.01)
    if scope == "per_layer":
        for name, achieved in outcome.extra["sparsity_per_tensor"].items():
            assert achieved == pytest.approx(sparsity, abs=0.01), name


def test_magnitude_pruning_leaves_biases_alone_and_keeps_outputs_close(mlp, tmp_path):
    out, outcome = _prune(prune_magnitude, mlp, tmp_path, {"sparsity": 0.5})

    before, after = _weights(mlp), _weights(out)
    for name in ("fc0.bias", "fc1.bias", "fc2.bias"):
        np.testing.assert_array_equal(before[name], after[name])
    assert set(outcome.extra["sparsity_per_tensor"]) == {"fc0.weight", "fc1.weight", "fc2.weight"}
    _, X_test, y_test = _digits("mlp")
    original, pruned = _run(mlp, X_test), _run(out, X_test)
    assert _cosine_min(original, pruned) > 0.95
    assert (original.argmax(1) == pruned.argmax(1)).mean() > 0.95
    assert abs((original.argmax(1) == y_test).mean() - (pruned.argmax(1) == y_test).mean()) < 0.03


def test_magnitude_pruning_shrinks_the_gzip_size_and_says_dense_runtimes_gain_no_speed(
    mlp, tmp_path
):
    out, outcome = _prune(prune_magnitude, mlp, tmp_path, {"sparsity": 0.8})

    assert out.stat().st_size == pytest.approx(mlp.stat().st_size, rel=0.02)
    gzip_before = len(gzip.compress(mlp.read_bytes()))
    gzip_after = len(gzip.compress(out.read_bytes()))
    assert gzip_after < 0.5 * gzip_before
    sizes = outcome.extra["compressed"]
    assert sizes["variant_gzip_bytes"] < 0.5 * sizes["original_gzip_bytes"]
    assert any("no faster" in note for note in outcome.notes)


def test_magnitude_pruning_reaches_weights_in_subgraphs_and_constant_nodes(tmp_path):
    if_model = _save(models.build_if_model(), tmp_path / "if.onnx")
    out, outcome = _prune(prune_magnitude, if_model, tmp_path, {"sparsity": 0.6})
    assert {"then.w0", "then.w1", "else.w0"} <= set(outcome.extra["sparsity_per_tensor"])
    assert outcome.extra["sparsity"] == pytest.approx(0.6, abs=0.01)
    _, X_test, _ = _digits("mlp")
    assert _run(out, X_test[:5]).shape == (5, 10)

    constants = _save(models.build_constant_weights_model(), tmp_path / "const.onnx")
    out, outcome = _prune(prune_magnitude, constants, tmp_path, {"sparsity": 0.6})
    assert outcome.extra["pruned_tensors"] == 3
    assert _cosine_min(_run(constants, X_test), _run(out, X_test)) > 0.8


@pytest.mark.parametrize(
    "params", [{"sparsity": 0}, {"sparsity": 1.0}, {"scope": "everywhere"}, {"ratio": 0.5}]
)
def test_magnitude_pruning_rejects_bad_parameters(mlp, tmp_path, params):
    with pytest.raises(EngineError):
        _prune(prune_magnitude, mlp, tmp_path, params)


# --- structured pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_structured_pruning_makes_a_smaller_model_that_keeps_its_accuracy(kind, request, tmp_path):
    src = request.getfixturevalue(kind)
    X_cal, X_test, y_test = _digits(kind)
    out, outcome = _prune(
        prune_structured, src, tmp_path, {"ratio": 0.25}, calibration={"x": X_cal[:400]}
    )

    assert outcome.extra["parameter_ratio"] < 0.8
    assert out.stat().st_size < 0.8 * src.stat().st_size
    layers = outcome.extra["layers"]
    assert all(
        layer["channels_removed"] == round(0.25 * layer["channels_before"])
        for layer in layers.values()
    )
    # The classifier head feeds the graph output: it must keep all ten classes.
    assert any("graph output" in why for why in outcome.extra["refused"].values())
    accuracy_before = (_run(src, X_test).argmax(1) == y_test).mean()
    accuracy_after = (_run(out, X_test).argmax(1) == y_test).mean()
    assert accuracy_after > accuracy_before - 0.03


def test_structured_pruning_reports_the_channels_removed_per_layer(mlp, tmp_path):
    out, outcome = _prune(prune_structured, mlp, tmp_path, {"ratio": 0.5, "refit": False})

    assert outcome.extra["layers"]["fc0"] == {
        "op": "Gemm",
        "channels_before": 256,
        "channels_removed": 128,
        "channels_after": 128,
        "consumers": ["fc1"],
    }
    weights = _weights(out)
    assert weights["fc0.weight"].shape == (64, 128)
    assert weights["fc1.weight"].shape == (128, 64)
    assert weights["fc2.weight"].shape == (64, 10)
    assert outcome.extra["parameters_after"] < 0.4 * outcome.extra["parameters_before"]


def _kept(original: np.ndarray, pruned: np.ndarray, axis: int) -> np.ndarray:
    """Which slices of ``original`` along ``axis`` survive in ``pruned`` (order preserved)."""
    originals = np.moveaxis(original, axis, 0).reshape(original.shape[axis], -1)
    survivors = np.moveaxis(pruned, axis, 0).reshape(pruned.shape[axis], -1)
    return np.array([int(np.flatnonzero((originals == row).all(axis=1))[0]) for row in survivors])


def _conv_bn_flatten_model(path: Path) -> Path:
    """Conv -> BatchNorm -> Relu -> MaxPool -> Reshape[0,-1] -> Gemm(transB) -> Sigmoid ->
    MatMul -> Add(bias) -> output: every path kind the recipe follows, with random weights."""
    rng = np.random.default_rng(1)

    def init(name, *shape, positive=False):
        value = rng.standard_normal(shape).astype(np.float32)
        return numpy_helper.from_array(np.abs(value) + 0.5 if positive else value, name)

    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gw", "gb"], ["g"], name="fc", transB=1),
        helper.make_node("Sigmoid", ["g"], ["sg"], name="sigmoid"),
        helper.make_node("MatMul", ["sg", "mw"], ["mm"], name="out"),
        helper.make_node("Add", ["mm", "mb"], ["y"], name="out_bias"),
    ]
    inits = [
        init("cw", 8, 3, 3, 3),
        init("cb", 8),
        init("s", 8, positive=True),
        init("b", 8),
        init("m", 8),
        init("v", 8, positive=True),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
        init("gw", 12, 8 * 4 * 4),
        init("gb", 12),
        init("mw", 12, 6),
        init("mb", 6),
    ]
    graph = helper.make_graph(
        nodes,
        "paths",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path)


def test_structured_pruning_equals_dropping_the_readers_inputs(tmp_path):
    """Removing channels is exact: the variant computes what the original computes with the
    readers' weights for those channels set to zero (BN, pooling and flatten followed)."""
    src = _conv_bn_flatten_model(tmp_path / "paths.onnx")
    out, outcome = _prune(prune_structured, src, tmp_path, {"ratio": 0.25, "refit": False})

    assert outcome.extra["layers"]["conv"]["channels_after"] == 6
    assert outcome.extra["layers"]["fc"]["channels_after"] == 9
    assert set(outcome.extra["refused"]) == {"out"}
    before, after = _weights(src), _weights(out)
    assert after["s"].shape == after["v"].shape == (6,)
    kept_conv = _kept(before["cw"], after["cw"], 0)
    kept_fc = _kept(
        before["gw"][:, np.repeat(kept_conv * 16, 16) + np.tile(range(16), 6)], after["gw"], 0
    )
    masked = onnx.load(str(src))
    for tensor in masked.graph.initializer:
        if tensor.name == "gw":
            gw = before["gw"].copy().reshape(12, 8, 16)
            gw[:, np.setdiff1d(range(8), kept_conv)] = 0
            tensor.CopyFrom(numpy_helper.from_array(gw.reshape(12, 128), "gw"))
        if tensor.name == "mw":
            mw = before["mw"].copy()
            mw[np.setdiff1d(range(12), kept_fc)] = 0
            tensor.CopyFrom(numpy_helper.from_array(mw, "mw"))
    masked_path = _save(masked, tmp_path / "masked.onnx")

    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(masked_path, x), rtol=1e-4, atol=1e-5)


def _residual_model(path: Path) -> Path:
    """x -> Gemm -> Relu -> Add(x) -> Gemm -> y: the first layer's output meets a skip path."""
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal((16, 16)).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["res"], name="residual"),
        helper.make_node("Gemm", ["res", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, path)


def test_structured_pruning_refuses_a_layer_that_feeds_a_residual_add(tmp_path):
    src = _residual_model(tmp_path / "residual.onnx")
    with pytest.raises(RecipeNotApplicable) as refused:
        _prune(prune_structured, src, tmp_path, {"ratio": 0.25})
    message = str(refused.value)
    assert "fc1" in message and "residual" in message
    assert "fc2" in message and "graph output" in message


def test_structured_pruning_refuses_a_model_without_main_graph_layers(tmp_path):
    src = _save(models.build_if_model(), tmp_path / "if.onnx")
    with pytest.raises(RecipeNotApplicable, match="no Conv, Gemm or MatMul"):
        _prune(prune_structured, src, tmp_path, {"ratio": 0.25})


@pytest.mark.parametrize("params", [{"ratio": 0}, {"ratio": 1}, {"sparsity": 0.5}])
def test_structured_pruning_rejects_bad_parameters(mlp, tmp_path, params):
    with pytest.raises(EngineError):
        _prune(prune_structured, mlp, tmp_path, params)
