"""Small real ONNX models for the compression tests, built offline from scikit-learn's digits.

Every builder returns an ``onnx.ModelProto`` and, when ``path`` is given, also writes it there.
The models are trained (or, for the CNN's convolutions, fixed) with fixed seeds, so every run
builds the same bytes. Results are cached per process: tests must not mutate what they get
(``copy()`` the proto first if they need to change it).

Builders:
- ``digits_data()``: (X_train, X_test, y_train, y_test), float32 in [0, 1], fixed split.
- ``build_digits_mlp(hidden=(256, 128))``: Gemm/Relu MLP, input "x" ["N", 64], output "logits".
- ``build_digits_cnn()``: input "x" ["N", 1, 8, 8]: Conv+Relu, Conv+Relu, Flatten, Gemm.
  The convolutions use fixed random filters; the head is a linear classifier on their features.
- ``build_if_model()``: an ``If`` node whose branches hold their own MatMul weights.
- ``build_constant_weights_model()``: the MLP with every weight in a ``Constant`` node.
- ``dataset_npz(path, X, y, input_name)``: writes the DESIGN.md dataset format.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 0


def _finish(graph: onnx.GraphProto, path: str | Path | None) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, str(path))
    return model


def _cached(builder):
    """Cache the built proto per arguments; write a fresh file for every ``path``."""

    @functools.cache
    def build(*args, **kwargs):
        return builder(*args, **kwargs)

    @functools.wraps(builder)
    def wrapper(*args, path: str | Path | None = None, **kwargs):
        model = build(*args, **kwargs)
        if path is not None:
            onnx.save(model, str(path))
        return model

    return wrapper


@functools.lru_cache(maxsize=1)
def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1797 8x8 digits scaled to [0, 1]: a fixed 80/20 split (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.2, random_state=SEED, stratify=y
    )
    return X_train, X_test, y_train.astype(np.int64), y_test.astype(np.int64)


@functools.cache
def _trained_mlp(hidden: tuple[int, ...]):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X_train, _, y_train, _ = digits_data()
    from threadpoolctl import threadpool_limits

    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=30, random_state=SEED)
    # One BLAS thread: these matrices are small, and on a busy 2-core machine several BLAS
    # pools fighting over the cores made training 10x slower.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    weights = [w.astype(np.float32) for w in clf.coefs_]
    biases = [b.astype(np.float32) for b in clf.intercepts_]
    return weights, biases


def _mlp_graph(hidden: tuple[int, ...], constant_nodes: bool) -> onnx.GraphProto:
    weights, biases = _trained_mlp(tuple(hidden))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    prev = "x"
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        w_name, b_name = f"fc{i}.weight", f"fc{i}.bias"
        if constant_nodes:
            nodes.append(
                helper.make_node("Constant", [], [w_name], value=numpy_helper.from_array(w, w_name))
            )
            nodes.append(
                helper.make_node("Constant", [], [b_name], value=numpy_helper.from_array(b, b_name))
            )
        else:
            inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)]
        last = i == len(weights) - 1
        out = "logits" if last else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [prev, w_name, b_name], [out], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            out = f"relu{i}"
        prev = out
    return helper.make_graph(
        nodes,
        "digits_mlp_const" if constant_nodes else "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )


@_cached
def build_digits_mlp(hidden: tuple[int, ...] = (256, 128)) -> onnx.ModelProto:
    """A trained MLP (Gemm/Relu), input "x" ["N", 64], output "logits" ["N", 10]."""
    return _finish(_mlp_graph(tuple(hidden), constant_nodes=False), None)


@_cached
def build_constant_weights_model(hidden: tuple[int, ...] = (256, 128)) -> onnx.ModelProto:
    """The same trained MLP, but every weight and bias is a Constant node, not an initializer."""
    return _finish(_mlp_graph(tuple(hidden), constant_nodes=True), None)


_CONV_CHANNELS = (8, 16)


def _conv_nodes() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    rng = np.random.default_rng(SEED)
    nodes, inits = [], []
    prev, c_in = "x", 1
    for i, c_out in enumerate(_CONV_CHANNELS):
        fan_in = c_in * 9
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"conv{i}.weight"),
            numpy_helper.from_array(b, f"conv{i}.bias"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}"],
                name=f"conv{i}",
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"crelu{i}"], name=f"crelu{i}"))
        prev, c_in = f"crelu{i}", c_out
    nodes.append(helper.make_node("Flatten", [prev], ["features"], name="flatten", axis=1))
    return nodes, inits


@_cached
def build_digits_cnn() -> onnx.ModelProto:
    """Two Conv+Relu layers with fixed He-initialised filters, then a trained linear Gemm head."""
    import onnxruntime as ort
    from sklearn.linear_model import RidgeClassifier

    n_features = _CONV_CHANNELS[-1] * 64
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])
    nodes, inits = _conv_nodes()
    features = _finish(
        helper.make_graph(
            nodes,
            "digits_cnn_features",
            [x_info],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
            inits,
        ),
        None,
    )
    sess = ort.InferenceSession(features.SerializeToString(), providers=["CPUExecutionProvider"])
    X_train, _, y_train, _ = digits_data()
    (f_train,) = sess.run(None, {"x": X_train.reshape(-1, 1, 8, 8)})
    # A ridge classifier is a linear head solved in closed form: as accurate as a logistic
    # regression on these features and ten times faster to fit.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        head = RidgeClassifier(alpha=1.0).fit(f_train, y_train)

    nodes, inits = _conv_nodes()
    inits += [
        numpy_helper.from_array(head.coef_.T.astype(np.float32), "head.weight"),
        numpy_helper.from_array(head.intercept_.astype(np.float32), "head.bias"),
    ]
    nodes.append(
        helper.make_node("Gemm", ["features", "head.weight", "head.bias"], ["logits"], name="head")
    )
    return _finish(
        helper.make_graph(
            nodes,
            "digits_cnn",
            [x_info],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
            inits,
        ),
        None,
    )


def _branch(name: str, w: list[np.ndarray], b: list[np.ndarray]) -> onnx.GraphProto:
    """x -> MatMul+Add -> Relu -> MatMul+Add, weights held by the branch itself."""
    p = name
    inits = [
        numpy_helper.from_array(w[0], f"{p}.w0"),
        numpy_helper.from_array(b[0], f"{p}.b0"),
        numpy_helper.from_array(w[1], f"{p}.w1"),
        numpy_helper.from_array(b[1], f"{p}.b1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", f"{p}.w0"], [f"{p}.mm0"], name=f"{p}.mm0"),
        helper.make_node("Add", [f"{p}.mm0", f"{p}.b0"], [f"{p}.add0"], name=f"{p}.add0"),
        helper.make_node("Relu", [f"{p}.add0"], [f"{p}.relu0"], name=f"{p}.relu0"),
        helper.make_node("MatMul", [f"{p}.relu0", f"{p}.w1"], [f"{p}.mm1"], name=f"{p}.mm1"),
        helper.make_node("Add", [f"{p}.mm1", f"{p}.b1"], [f"{p}.out"], name=f"{p}.add1"),
    ]
    return helper.make_graph(
        nodes,
        name,
        [],
        [helper.make_tensor_value_info(f"{p}.out", TensorProto.FLOAT, ["N", 10])],
        inits,
    )


@_cached
def build_if_model() -> onnx.ModelProto:
    """``If(sum(x) >= 0)``: the then-branch is a trained 64-256-10 MLP made of MatMul+Add, the
    else-branch a second copy with its weights halved. Digits are non-negative, so the
    then-branch always runs; both branches hold their weights as their own initializers."""
    weights, biases = _trained_mlp((256,))
    then_g = _branch("then", weights, biases)
    else_g = _branch("else", [w * 0.5 for w in weights], biases)
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("GreaterOrEqual", ["total", "zero"], ["cond"], name="cond"),
        helper.make_node(
            "If", ["cond"], ["logits"], name="branch", then_branch=then_g, else_branch=else_g
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    return _finish(graph, None)


def dataset_npz(
    path: str | Path, X: np.ndarray, y: np.ndarray | None, input_name: str = "x"
) -> Path:
    """Write the DESIGN.md dataset format: one array per input with a leading sample axis.

    ``X`` holds one row per sample as the model takes it without its batch axis (e.g. [n, 64]
    for an input ["N", 64]); each sample is stored with a batch of one ([n, 1, 64]).
    """
    arrays = {input_name: np.ascontiguousarray(X[:, None, ...])}
    if y is not None:
        arrays["labels"] = np.asarray(y, dtype=np.int64)
    path = Path(path)
    np.savez(path, **arrays)
    return path
