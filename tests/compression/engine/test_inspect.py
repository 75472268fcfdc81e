"""Inspection: a strict gate with readable errors, and a faithful description of the model."""

import hashlib

import pytest

from compression.engine import EngineError
from compression.engine.inspect import inspect_model


def test_describes_inputs_outputs_opset_and_parameters(mlp_path):
    info = inspect_model(mlp_path)
    assert info.opset == 17 and info.ir_version == 8
    assert info.producer == "edgefleet-tests"
    assert [(s.name, s.dtype, s.shape) for s in info.inputs] == [("x", "float32", ["N", 64])]
    assert [(s.name, s.shape) for s in info.outputs] == [("logits", ["N", 10])]
    assert info.parameter_count == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert info.op_histogram == {"Gemm": 3, "Relu": 2}
    assert info.control_flow_ops == []
    assert info.size_bytes == mlp_path.stat().st_size
    assert info.sha256 == hashlib.sha256(mlp_path.read_bytes()).hexdigest()


def test_finds_control_flow_and_counts_weights_inside_subgraphs(if_path):
    info = inspect_model(if_path)
    assert info.control_flow_ops == ["If"]
    assert info.subgraph_count == 2
    assert info.op_histogram["MatMul"] == 4  # two per branch, all nested
    assert info.parameter_count > 2 * 64 * 256


def test_a_file_that_is_not_onnx_is_refused_plainly(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(EngineError, match="not .*ONNX"):
        inspect_model(path)


def test_a_truncated_model_is_refused_plainly(tmp_path, mlp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(mlp_path.read_bytes()[: mlp_path.stat().st_size // 2])
    with pytest.raises(EngineError, match="cut.onnx"):
        inspect_model(path)


def test_an_empty_or_missing_file_is_refused_plainly(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(EngineError, match="empty"):
        inspect_model(tmp_path / "empty.onnx")
    with pytest.raises(EngineError, match="not found"):
        inspect_model(tmp_path / "missing.onnx")


def test_an_invalid_graph_reports_the_checkers_message(tmp_path):
    import onnx

    from tests.compression.engine import models

    model = onnx.ModelProto()
    model.CopyFrom(models.build_digits_mlp())
    model.graph.node[0].input[1] = "no_such_weight"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(EngineError, match="fails the ONNX checker.*no_such_weight"):
        inspect_model(path)
