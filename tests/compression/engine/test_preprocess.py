"""Pre-processing changes what quantizers can see, never what the model computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine.preprocess import constants_to_initializers, gemm_to_matmul, preprocess


def _run(model_or_path, x):
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_constant_weights_become_initializers_and_outputs_are_unchanged(
    tmp_path, const_path, digits
):
    X = digits[1]
    result = preprocess(const_path, tmp_path / "pre.onnx")
    model = onnx.load(str(result.path))
    assert result.constants_moved == 6
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    assert len(model.graph.initializer) == 6
    assert result.shape_inference in ("onnxruntime", "onnx")
    np.testing.assert_allclose(
        _run(str(result.path), X), _run(str(const_path), X), rtol=1e-5, atol=1e-5
    )


def test_constants_inside_subgraphs_are_moved_too():
    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=w),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
    )
    model = helper.make_model(graph)
    assert constants_to_initializers(model) == 2
    for attr in model.graph.node[0].attribute:
        assert [i.name for i in attr.g.initializer] == ["w"]
        assert [n.op_type for n in attr.g.node] == ["MatMul"]


@pytest.mark.parametrize(("trans_b", "alpha", "beta"), [(0, 1.0, 1.0), (1, 0.5, 2.0)])
def test_gemm_becomes_matmul_plus_add_with_identical_results(trans_b, alpha, beta):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((8, 4) if not trans_b else (4, 8)).astype(np.float32)
    c = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "b", "c"], ["y"], transB=trans_b, alpha=alpha, beta=beta)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(b, "b"), numpy_helper.from_array(c, "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((3, 8)).astype(np.float32)
    before = _run(model, x)
    assert gemm_to_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
