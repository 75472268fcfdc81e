"""Verification is the same for every recipe: nothing out of tolerance is ever accepted."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.engine.data import load_dataset
from compression.engine.inspect import inspect_model
from compression.engine.verify import LatencySettings, Tolerance, verify_variant
from tests.compression.engine import models

QUICK = LatencySettings(runs=20, warmup=2)


def _evaluation(mlp_dataset, mlp_path):
    feeds, labels, _, _ = load_dataset(mlp_dataset, inspect_model(mlp_path).inputs)
    return {"x": feeds["x"][:100]}, labels[:100]


def test_a_destroyed_variant_is_rejected_with_the_reason_in_plain_words(
    tmp_path, mlp_path, mlp_dataset
):
    model = onnx.ModelProto()
    model.CopyFrom(models.build_digits_mlp())
    for init in model.graph.initializer:
        if init.name.endswith("weight"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
    path = tmp_path / "zeroed.onnx"
    onnx.save(model, str(path))
    feeds, labels = _evaluation(mlp_dataset, mlp_path)
    result = verify_variant(
        mlp_path,
        path,
        evaluation=feeds,
        labels=labels,
        latency=QUICK,
        original_size=mlp_path.stat().st_size,
        cause="quantization",
    )
    assert result.status == "rejected"
    assert result.fidelity["cosine_min"] < 0.99
    assert result.reason.startswith("cosine ") and "output 'logits' < 0.99" in result.reason
    assert "by quantization" in result.reason
    assert result.fidelity["accuracy"] < 0.5 < result.fidelity["accuracy_original"]


def test_the_original_itself_is_accepted_on_fidelity_but_not_smaller(mlp_path, mlp_dataset):
    feeds, labels = _evaluation(mlp_dataset, mlp_path)
    result = verify_variant(
        mlp_path,
        mlp_path,
        evaluation=feeds,
        labels=labels,
        latency=QUICK,
        original_size=mlp_path.stat().st_size,
        tolerance=Tolerance(latency_slack=10.0),
    )
    assert result.fidelity["cosine_min"] > 0.9999 and result.fidelity["top1_agreement"] == 1.0
    assert result.within_tolerance
    assert result.status == "rejected" and result.reason.startswith("not smaller")


def _with_useless_work(model: onnx.ModelProto) -> onnx.ModelProto:
    """Same outputs plus a 4096x512 MatMul whose result is multiplied by zero."""
    slow = onnx.ModelProto()
    slow.CopyFrom(model)
    g = slow.graph
    logits = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "reps"),
            numpy_helper.from_array(np.array([4096, 512], dtype=np.int64), "wshape"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Tile", ["x", "reps"], ["wide"]),
            helper.make_node(
                "ConstantOfShape",
                ["wshape"],
                ["w"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.01]),
            ),
            helper.make_node("MatMul", ["wide", "w"], ["busy"]),
            helper.make_node("ReduceSum", ["busy"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", [f"{logits}_raw", "nothing"], [logits]),
        ]
    )
    return slow


def test_a_slower_variant_is_rejected_even_with_perfect_fidelity(tmp_path, mlp_path, mlp_dataset):
    path = tmp_path / "slow.onnx"
    onnx.save(_with_useless_work(models.build_digits_mlp()), str(path))
    feeds, labels = _evaluation(mlp_dataset, mlp_path)
    result = verify_variant(mlp_path, path, evaluation=feeds, labels=labels, latency=QUICK)
    assert result.within_tolerance
    assert result.status == "rejected"
    assert result.reason.startswith("slower than the original on this host")
    assert result.latency_ratio > 2
    assert set(result.latency_ms) == {"p50", "p90", "p99"}


def test_a_variant_that_does_not_load_is_failed(tmp_path, mlp_path, mlp_dataset):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07garbage")
    feeds, labels = _evaluation(mlp_dataset, mlp_path)
    result = verify_variant(mlp_path, path, evaluation=feeds, labels=labels, latency=QUICK)
    assert result.status == "failed" and result.reason
