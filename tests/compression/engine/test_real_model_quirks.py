"""Quirks of real third-party models (found by bench/compression), rebuilt as tiny models.

- scalar inputs (silero-vad's int64 ``sr``): fed as 0-d arrays, never as ``numpy.int64``;
  synthesized as a plausible constant;
- opset 11/12 exports (Paddle's ppocr, ddddocr): per-channel static int8 needs opset 13;
- input dims written as ``-1`` (Paddle): dynamic, so ``--input-shape`` can set them;
- a half-pruned model that still carries shape annotations (``value_info``);
- distilled variants ranked by the fidelity their own rule uses, not logit cosine;
- a variant that is only smaller gzip-compressed is never recommended unless asked.

Every model here is built in the test and run in real onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.engine import EngineError, compress
from compression.engine.base import RecipeContext
from compression.engine.data import prepare_data, resolve_shape, sample_feed, synthesize
from compression.engine.inspect import inspect_model, tensor_spec
from compression.engine.recipes import int8_static, prune_structured
from compression.engine.report import VariantReport, pareto_front, recommend
from compression.engine.verify import first_sample, run_samples
from tests.compression.engine import models
from tests.compression.engine.conftest import FAST

# --- scalar inputs -------------------------------------------------------------------------------


def _scalar_rate_model(path: Path) -> Path:
    """y = x @ W * (2 if sr == 16000 else 3): an ``If`` on an int64 scalar, like silero-vad."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)

    def branch(name: str, factor: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["mm", f"{name}.k"], [f"{name}.out"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}.out", TensorProto.FLOAT, ["N", 32])],
            [numpy_helper.from_array(np.array(factor, dtype=np.float32), f"{name}.k")],
        )

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"]),
            helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
            helper.make_node(
                "If",
                ["is16k"],
                ["y"],
                then_branch=branch("then", 2.0),
                else_branch=branch("else", 3.0),
            ),
        ],
        "scalar_rate",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(16000, dtype=np.int64), "rate16k"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_scalar_inputs_are_fed_as_0d_arrays(tmp_path):
    path = _scalar_rate_model(tmp_path / "scalar.onnx")
    feeds = {
        "x": np.random.default_rng(1).standard_normal((5, 1, 64)).astype(np.float32),
        "sr": np.full(5, 16000, dtype=np.int64),
    }
    one = first_sample(feeds)
    assert (
        isinstance(one["sr"], np.ndarray) and one["sr"].shape == () and one["sr"].dtype == np.int64
    )
    assert all(isinstance(v, np.ndarray) for v in sample_feed(feeds, 3).values())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = run_samples(session, feeds)  # the per-sample path (sr has no batch axis)
    assert outs["y"].shape == (5, 1, 32)
    expected = feeds["x"][:, 0] @ numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    np.testing.assert_allclose(outs["y"][:, 0], 2.0 * expected, rtol=1e-4, atol=1e-4)


def test_a_scalar_sample_rate_is_synthesized_as_16000_and_marked_synthetic(tmp_path):
    path = _scalar_rate_model(tmp_path / "scalar.onnx")
    info = inspect_model(path)
    feeds, notes = synthesize(info.inputs, None, 6)
    assert feeds["sr"].shape == (6,) and set(feeds["sr"].tolist()) == {16000}
    assert any("'sr' is a scalar int64" in n and "16000" in n for n in notes)

    report = compress(path, "int8-dynamic", out_dir=tmp_path / "out", options=FAST)
    assert report.dataset["synthetic"] is True
    variant = report.variants[0]
    assert "Unable to handle" not in variant.reason
    assert variant.status in ("accepted", "rejected"), variant.reason
    assert variant.fidelity["cosine_min"] > 0.99
    assert report.baseline["latency_ms"]["p50"] > 0


def test_an_original_that_cannot_run_on_the_inputs_is_explained(tmp_path):
    """A scalar ``k`` reshapes 7 values to [-1, k]: the synthesized constant 1 fits, a dataset
    with k=2 does not, and the engine says the *original* fails on those inputs."""
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["k", "axes"], ["k1"]),
            helper.make_node("Concat", ["one", "k1"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        "needs_k",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7]),
            helper.make_tensor_value_info("k", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "needs_k.onnx"
    onnx.save(model, str(path))
    feeds, _ = synthesize(inspect_model(path).inputs, None, 2)
    assert feeds["k"].tolist() == [1, 1]  # runs: shape [-1, 1] fits 7 elements
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 7), np.float32), k=np.full(4, 2, np.int64))
    with pytest.raises(EngineError, match="original model fails to run on the dataset"):
        compress(path, "fp16", dataset=tmp_path / "bad.npz", out_dir=tmp_path / "o", options=FAST)


def test_if_bodies_reading_outer_tensors_are_sorted_after_their_producers(tmp_path):
    from compression.engine.preprocess import sort_topologically

    path = _scalar_rate_model(tmp_path / "scalar.onnx")
    model = onnx.load(str(path))
    assert not sort_topologically(model.graph)  # already in order: untouched
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[2], nodes[1], nodes[0]])  # If first, as converters leave it
    assert sort_topologically(model.graph)
    assert [n.op_type for n in model.graph.node][-1] == "If"
    onnx.checker.check_model(model, full_check=True)


# --- opset 11 models and per-channel static int8 ----------------------------------------------------


def _opset11_cnn(path: Path) -> Path:
    model = onnx.ModelProto()
    model.CopyFrom(models.build_digits_cnn())
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 11))
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _cnn_feeds(n: int) -> dict[str, np.ndarray]:
    X_train, _, _, _ = models.digits_data()
    return {"x": X_train[:n].reshape(-1, 1, 1, 8, 8)}


def _static(src: Path, out: Path, params: dict | None = None):
    return int8_static.apply(
        RecipeContext(
            model_path=src,
            out_path=out,
            params=params or {"fallback": False},
            calibration=_cnn_feeds(64),
            work_dir=out.parent / "scratch",
        )
    )


def test_per_channel_static_int8_converts_an_opset_11_model_to_13(tmp_path):
    src = _opset11_cnn(tmp_path / "cnn11.onnx")
    outcome = _static(src, tmp_path / "q.onnx")
    assert any("converted from opset 11 to 13" in n for n in outcome.notes)
    assert outcome.params["per_channel"] is True
    model = onnx.load(str(outcome.path))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    axes = [
        a.i
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        for a in n.attribute
        if a.name == "axis"
    ]
    assert axes  # per-channel weights
    session = ort.InferenceSession(str(outcome.path), providers=["CPUExecutionProvider"])
    _, X_test, _, y_test = models.digits_data()
    (logits,) = session.run(None, {"x": X_test.reshape(-1, 1, 8, 8)})
    assert (logits.argmax(1) == y_test).mean() > 0.9


def test_per_channel_falls_back_to_per_tensor_when_the_conversion_fails(tmp_path, monkeypatch):
    from onnx import version_converter

    def broken(model, version):
        raise RuntimeError("no adapter for this op")

    monkeypatch.setattr(version_converter, "convert_version", broken)
    src = _opset11_cnn(tmp_path / "cnn11.onnx")
    outcome = _static(src, tmp_path / "q.onnx")
    assert outcome.params["per_channel"] is False
    assert any("per-channel off" in n and "no adapter" in n for n in outcome.notes)
    ort.InferenceSession(str(outcome.path), providers=["CPUExecutionProvider"])


def test_static_int8_through_compress_on_an_opset_11_model_is_verified(tmp_path, cnn_dataset):
    src = _opset11_cnn(tmp_path / "cnn11.onnx")
    report = compress(src, "int8-static", dataset=cnn_dataset, out_dir=tmp_path / "o", options=FAST)
    variant = report.variants[0]
    assert variant.status != "failed", variant.reason
    assert variant.fidelity["top1_agreement"] >= 0.97


# --- dims written as -1 ------------------------------------------------------------------------------


def _minus_one_model(path: Path) -> Path:
    """Paddle style: input x [-1, 16] (the batch written as -1), a 16x8 MatMul."""
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 8])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "paddle_like",
        [x],
        [y],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_minus_one_dims_are_dynamic_and_input_shape_can_set_them(tmp_path):
    path = _minus_one_model(tmp_path / "m1.onnx")
    info = inspect_model(path)
    spec = info.inputs[0]
    assert spec.shape == [None, 16]
    assert any("-1 or 0" in n for n in info.notes)
    # Before: "input shape for 'x' sets axis 0 to 4, but the model fixes it to -1".
    assert resolve_shape(spec, [4, 16], []) == [4, 16]
    notes: list[str] = []
    assert resolve_shape(spec, None, notes) == [1, 16]
    assert notes == ["input 'x': dynamic batch axis set to 1"]
    with pytest.raises(EngineError, match="fixes it to 16"):
        resolve_shape(spec, [1, 15], [])
    data = prepare_data(info.inputs, input_shapes={"x": [2, 16]}, synthetic_samples=8)
    assert data.evaluation["x"].shape[1:] == (2, 16)

    report = compress(
        path, "fp16", input_shapes={"x": [1, 16]}, out_dir=tmp_path / "o", options=FAST
    )
    assert report.variants[0].status != "failed", report.variants[0].reason
    assert any("rewritten as symbolic" in n for n in report.notes)


def test_zero_and_negative_dims_read_as_unknown():
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [0, -3, 5])
    assert tensor_spec(value).shape == [None, None, 5]


# --- structured pruning on an annotated model ----------------------------------------------------


def test_structured_pruning_refits_even_when_the_model_carries_shape_annotations(tmp_path):
    annotated = onnx.shape_inference.infer_shapes(models.build_digits_mlp())
    assert len(annotated.graph.value_info) > 0
    src = tmp_path / "annotated.onnx"
    onnx.save(annotated, str(src))
    X_train, X_test, _, y_test = models.digits_data()
    outcome = prune_structured.apply(
        RecipeContext(
            model_path=src,
            out_path=tmp_path / "pruned.onnx",
            params={"ratio": 0.25},
            calibration={"x": X_train[:300, None, :]},
        )
    )
    assert not any("refit skipped" in n for n in outcome.notes), outcome.notes
    assert any(n.startswith("refitted") for n in outcome.notes)
    session = ort.InferenceSession(str(outcome.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": X_test})
    assert (logits.argmax(1) == y_test).mean() > 0.9


# --- ranking distilled variants -------------------------------------------------------------------


def _variant(recipe, size, p50, *, cosine, top1=None, distilled=False, gzip=None):
    entry = {"cosine_min": cosine, "cosine_mean": cosine, "relative_l2_error": 0.1, "finite": True}
    if top1 is not None:
        entry["top1_agreement"] = top1
    return VariantReport(
        recipe=recipe,
        params={},
        status="accepted",
        reason="ok",
        size_bytes=size,
        gzip_bytes=gzip if gzip is not None else size,
        latency_ms={"p50": p50, "p90": p50, "p99": p50},
        fidelity={
            "cosine_min": cosine,
            "top1_agreement": top1,
            "rule": "decisions" if distilled else "outputs",
            "outputs": {"logits": entry},
        },
    )


def test_distilled_variants_are_ranked_by_top1_agreement_not_logit_cosine():
    # Same size and speed: the one that agrees with the teacher more often must win, although
    # its logits point elsewhere (a KL-trained student's logits are shifted per sample).
    agrees_less = _variant("distill", 1000, 1.0, cosine=0.95, top1=0.975, distilled=True)
    agrees_more = _variant("distill", 1000, 1.0, cosine=-0.2, top1=0.995, distilled=True)
    variants = [agrees_less, agrees_more]
    assert agrees_more.fidelity_score == 0.995 and agrees_less.fidelity_score == 0.975
    assert pareto_front(variants) == [1]
    best, reason = recommend(variants, {}, original_size=10_000, original_gzip=9_000)
    assert best == 1
    assert "top-1 agreement 0.9950" in reason
    assert agrees_more.to_dict()["fidelity_score"] == 0.995


def test_non_distilled_variants_keep_cosine_as_their_fidelity_score():
    quantized = _variant("int8-dynamic", 1000, 1.0, cosine=0.999, top1=1.0)
    assert quantized.fidelity_score == 0.999


# --- "smaller" means smaller on disk ---------------------------------------------------------------


def test_a_variant_smaller_only_gzip_compressed_is_not_recommended_by_default():
    original_size, original_gzip = 10_000, 9_000
    sparse = _variant("prune-magnitude", 10_000, 0.5, cosine=0.999, gzip=5_000)
    best, reason = recommend([sparse], {}, original_size=original_size, original_gzip=original_gzip)
    assert best is None
    assert "smaller on disk" in reason and "size_metric" in reason

    best, reason = recommend(
        [sparse], {"size_metric": "gzip"}, original_size=original_size, original_gzip=original_gzip
    )
    assert best == 0 and "gzip bytes" in reason

    smaller = _variant("int8-dynamic", 4_000, 0.9, cosine=0.995, gzip=3_800)
    best, reason = recommend(
        [sparse, smaller], {}, original_size=original_size, original_gzip=original_gzip
    )
    assert best == 1 and "not smaller on disk" in reason


def test_compress_never_recommends_magnitude_pruning_alone(tmp_path, mlp_path, mlp_dataset):
    report = compress(
        mlp_path,
        "prune-magnitude",
        params={"sparsity": 0.3},
        dataset=mlp_dataset,
        out_dir=tmp_path / "o",
        options={**FAST, "cosine_min": 0.95},
    )
    variant = report.variants[0]
    assert variant.size_bytes >= report.model["size_bytes"]  # dense tensors, same raw size
    assert variant.gzip_bytes < report.model["gzip_bytes"]
    assert variant.status == "accepted", variant.reason
    assert report.recommended is None and "smaller on disk" in report.reason

    gz = compress(
        mlp_path,
        "prune-magnitude",
        params={"sparsity": 0.3},
        dataset=mlp_dataset,
        out_dir=tmp_path / "o2",
        options={**FAST, "cosine_min": 0.95},
        constraints={"size_metric": "gzip"},
    )
    assert gz.recommended == 0


def test_an_unknown_size_metric_is_refused(tmp_path, mlp_path):
    with pytest.raises(EngineError, match="size_metric"):
        compress(mlp_path, "fp16", out_dir=tmp_path, constraints={"size_metric": "zstd"})
