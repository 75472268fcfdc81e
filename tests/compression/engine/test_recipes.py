"""Each recipe on real models, with real onnxruntime, checked on real numbers."""

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine import EngineError, RecipeContext, compress
from compression.engine.data import prepare_data
from compression.engine.inspect import inspect_model
from compression.engine.preprocess import gemm_to_matmul, preprocess
from compression.engine.recipes import REGISTRY, RecipeSpec, split_chain_params, validate_params
from compression.engine.verify import quantized_ops_share
from tests.compression.engine.conftest import FAST


def _one(model, recipe, tmp_path, dataset=None, **kwargs):
    report = compress(
        model, recipe, dataset=dataset, out_dir=tmp_path / "out", options=FAST, **kwargs
    )
    assert len(report.variants) == 1
    return report.variants[0]


def test_int8_dynamic_makes_the_mlp_over_3x_smaller_and_keeps_its_predictions(
    tmp_path, mlp_path, mlp_dataset
):
    v = _one(mlp_path, "int8-dynamic", tmp_path, mlp_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_ratio >= 3.0
    assert v.fidelity["top1_agreement"] >= 0.98 and v.fidelity["cosine_min"] >= 0.99
    assert v.quantized_ops_share == 1.0
    assert any("Gemm" in note for note in v.notes)


def test_constant_weights_are_quantized_only_after_preprocessing(tmp_path, const_path, mlp_dataset):
    from onnxruntime.quantization import quantize_dynamic

    original = const_path.stat().st_size
    # Naive: even with Gemm rewritten as MatMul, weights held in Constant nodes are not seen as
    # weights, so nothing shrinks.
    naive_in = onnx.load(str(const_path))
    gemm_to_matmul(naive_in)
    onnx.save(naive_in, str(tmp_path / "naive_in.onnx"))
    quantize_dynamic(str(tmp_path / "naive_in.onnx"), str(tmp_path / "naive.onnx"))
    naive = (tmp_path / "naive.onnx").stat().st_size
    assert naive > 0.9 * original

    v = _one(const_path, "int8-dynamic", tmp_path, mlp_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_bytes < original / 3
    assert v.fidelity["top1_agreement"] >= 0.98


def test_int8_dynamic_quantizes_weights_inside_if_branches(tmp_path, if_path, mlp_dataset):
    v = _one(if_path, "int8-dynamic", tmp_path, mlp_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_ratio >= 3.0 and v.quantized_ops_share >= 0.9
    assert any("subgraphs of If" in note for note in v.notes)


def test_int8_static_calibrates_the_cnn_and_stays_faithful(tmp_path, cnn_path, cnn_dataset):
    v = _one(cnn_path, "int8-static", tmp_path, cnn_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_ratio >= 2.5
    assert v.fidelity["cosine_min"] >= 0.99 and v.fidelity["top1_agreement"] >= 0.98
    assert v.params["calibration"] == "minmax" and v.params["per_channel"] is True


def test_int8_static_falls_back_to_float_for_sensitive_nodes(tmp_path, cnn_path, cnn_dataset):
    from compression.engine.recipes.int8_static import apply

    info = inspect_model(cnn_path)
    data = prepare_data(
        info.inputs, dataset=cnn_dataset, calibration_samples=64, evaluation_samples=64
    )
    pre = preprocess(cnn_path, tmp_path / "pre.onnx")
    ctx = RecipeContext(
        model_path=pre.path,
        out_path=tmp_path / "q.onnx",
        params={"max_fallback_rounds": 2},
        calibration=data.calibration,
        evaluation=data.evaluation,
        evaluation_labels=data.evaluation_labels,
        work_dir=tmp_path / "work",
        settings={"cosine_min": 0.99999, "top1_min": 1.0},  # stricter than int8 can reach
    )
    outcome = apply(ctx)
    assert outcome.extra["fallback_rounds"] >= 1
    assert any("trying float fallback" in note for note in outcome.notes)
    assert any(note.startswith(("kept ", "gave up")) for note in outcome.notes)


def test_int8_static_refuses_a_model_whose_weights_all_live_in_subgraphs(
    tmp_path, if_path, mlp_dataset
):
    v = _one(if_path, "int8-static", tmp_path, mlp_dataset)
    assert v.status == "failed" and v.not_applicable
    assert "subgraphs" in v.reason


def test_int4_packs_the_mlp_weights_as_matmulnbits(tmp_path, mlp_path, mlp_dataset):
    v = _one(mlp_path, "int4-weight", tmp_path, mlp_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_ratio >= 5.0
    assert v.extra["int4-weight"]["quantized_nodes"] == 3
    assert v.fidelity["top1_agreement"] >= 0.98


def test_int4_refuses_a_conv_only_model(tmp_path, digits):
    import numpy as np

    w = np.ones((4, 1, 3, 3), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "conv.onnx"))
    v = _one(tmp_path / "conv.onnx", "int4-weight", tmp_path)
    assert v.status == "failed" and v.not_applicable
    assert "no MatMul with a constant 2-D float weight" in v.reason


def test_fp16_halves_the_cnn_and_keeps_float32_io(tmp_path, cnn_path, cnn_dataset):
    v = _one(cnn_path, "fp16", tmp_path, cnn_dataset, constraints={})
    assert v.fidelity["cosine_min"] >= 0.999, v.reason
    assert 1.8 <= v.size_ratio <= 2.1
    model = onnx.load(v.path)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert quantized_ops_share(model) == 1.0


def test_fp16_handles_the_if_model(tmp_path, if_path, mlp_dataset):
    v = _one(if_path, "fp16", tmp_path, mlp_dataset)
    assert v.status == "accepted", v.reason
    assert v.size_ratio >= 1.8


def test_chains_apply_in_order_and_route_parameters(tmp_path, mlp_path, mlp_dataset):
    steps = ["prune-magnitude", "int8-dynamic"]
    routed = split_chain_params(steps, {"sparsity": 0.3, "per_channel": True})
    assert routed[0]["sparsity"] == 0.3 and routed[1]["per_channel"] is True
    nested = split_chain_params(steps, {"int8-dynamic": {"per_channel": True}})
    assert nested[1]["per_channel"] is True
    v = _one(
        mlp_path, "prune-magnitude+int8-dynamic", tmp_path, mlp_dataset, params={"sparsity": 0.2}
    )
    assert set(v.params) == set(steps)
    assert v.fidelity["top1_agreement"] >= 0.97
    assert v.gzip_ratio > v.size_ratio  # zeroed weights compress further


def test_unknown_recipes_and_parameters_are_refused_clearly(tmp_path, mlp_path):
    with pytest.raises(EngineError, match="unknown recipe 'int9'.*int8-dynamic"):
        compress(mlp_path, "int9", out_dir=tmp_path)
    with pytest.raises(EngineError, match=r"int8-dynamic': unknown parameter\(s\) \['bits'\]"):
        compress(mlp_path, "int8-dynamic", params={"bits": 4}, out_dir=tmp_path)
    with pytest.raises(EngineError, match="'nope' is not known to any step"):
        split_chain_params(["prune-magnitude", "int8-dynamic"], {"nope": 1})
    with pytest.raises(EngineError, match="calibration must be one of"):
        validate_params("int8-static", {"calibration": "magic"})


def test_a_recipe_whose_module_is_missing_fails_clearly(
    monkeypatch, tmp_path, mlp_path, mlp_dataset
):
    monkeypatch.setitem(
        REGISTRY,
        "prune-magic",
        RecipeSpec("prune-magic", "compression.engine.recipes.nope:apply", "x"),
    )
    with pytest.raises(EngineError, match="not available in this installation"):
        compress(mlp_path, "prune-magic", out_dir=tmp_path)
    with pytest.raises(EngineError, match="prune-magic"):
        validate_params("prune-magic", {})
