"""How distilled variants are judged, what data distillation trains on, and when it runs.

A student trained with a KL loss matches the teacher's decisions, not its raw logits (the loss
ignores a per-sample shift of the logits), so distilled variants are judged by top-1 agreement
and accuracy instead of logit cosine. Real runs with fixed seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compression.engine import EngineOptions, compress
from compression.engine.auto import GRID, candidates
from compression.engine.base import RecipeContext, RecipeNotApplicable
from compression.engine.data import prepare_data, split_indices
from compression.engine.inspect import inspect_model
from compression.engine.verify import LatencySettings, Tolerance, judge, verify_variant
from tests.compression.engine import models
from tests.compression.engine.conftest import FAST

QUICK = LatencySettings(runs=20, warmup=2)
WIDE = Tolerance(latency_slack=10.0)


def _shifted_logits_model(path: Path) -> Path:
    """The digits MLP whose logits get a per-sample constant added (10 x the sum of the input):
    every decision is the teacher's, but the logit vectors point elsewhere (low cosine). This
    is exactly the freedom a KL-trained student has."""
    model = onnx.ModelProto()
    model.CopyFrom(models.build_digits_mlp())
    graph = model.graph
    final = graph.node[-1]
    final.output[0] = "raw_logits"
    graph.initializer.append(helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]))
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["x"], ["row_sum"], keepdims=1),
            helper.make_node("Mul", ["row_sum", "ten"], ["shift"]),
            helper.make_node("Add", ["raw_logits", "shift"], ["logits"]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def evaluation(mlp_path, mlp_dataset):
    data = prepare_data(inspect_model(mlp_path).inputs, dataset=mlp_dataset)
    return data.evaluation, data.evaluation_labels


def test_distilled_variants_are_judged_by_decisions_not_logit_cosine(
    tmp_path, mlp_path, evaluation
):
    shifted = _shifted_logits_model(tmp_path / "shifted.onnx")
    feeds, labels = evaluation
    common = {"evaluation": feeds, "labels": labels, "tolerance": WIDE, "latency": QUICK}

    as_quantized = verify_variant(mlp_path, shifted, cause="quantization", **common)
    assert as_quantized.fidelity["top1_agreement"] == 1.0
    assert as_quantized.fidelity["cosine_min"] < 0.9
    assert not as_quantized.within_tolerance and as_quantized.reason.startswith("cosine")
    assert as_quantized.fidelity["rule"] == "outputs"

    as_distilled = verify_variant(mlp_path, shifted, cause="distillation", distilled=True, **common)
    assert as_distilled.within_tolerance
    assert as_distilled.fidelity["rule"] == "decisions"
    assert as_distilled.fidelity["rule_text"] == (
        "judged by top-1 agreement and accuracy because distillation changes logits"
    )
    assert any("because distillation changes logits" in n for n in as_distilled.notes)


def _fid(outputs: dict, accuracy=None, accuracy_original=None) -> dict:
    return {"outputs": outputs, "accuracy": accuracy, "accuracy_original": accuracy_original}


def _entry(cos_min=0.1, cos_mean=0.5, rel=0.5, top1=None) -> dict:
    entry = {"finite": True, "cosine_min": cos_min, "cosine_mean": cos_mean}
    entry["relative_l2_error"], entry["max_abs_error"] = rel, 1.0
    if top1 is not None:
        entry["top1_agreement"] = top1
    return entry


def test_the_distilled_rule_thresholds():
    tol = Tolerance()
    assert tol.distill_top1_min == 0.97 and tol.distill_accuracy_drop_max == 0.02
    ok = _fid({"logits": _entry(top1=0.98)}, accuracy=0.96, accuracy_original=0.975)
    assert judge(ok, tol, "distillation", distilled=True) is None
    assert judge(ok, tol, "distillation") is not None  # cosine 0.1 under the default rule

    low = _fid({"logits": _entry(top1=0.95)})
    assert "top-1 agreement 0.950" in judge(low, tol, "distillation", distilled=True)

    dropped = _fid({"logits": _entry(top1=0.98)}, accuracy=0.95, accuracy_original=0.975)
    reason = judge(dropped, tol, "distillation", distilled=True)
    assert reason.startswith("accuracy drops from 0.975 to 0.950, more than the allowed 0.02")
    strict = Tolerance(accuracy_drop_max=0.001)
    assert judge(ok, strict, "distillation", distilled=True).startswith("accuracy drops")

    # Outputs that are not class scores keep a closeness rule: mean cosine and relative error.
    close = _fid({"embedding": _entry(cos_min=0.5, cos_mean=0.995, rel=0.05)})
    assert judge(close, tol, "distillation", distilled=True) is None
    far = _fid({"embedding": _entry(cos_min=0.5, cos_mean=0.995, rel=0.2)})
    assert "relative L2 error 0.2" in judge(far, tol, "distillation", distilled=True)
    bent = _fid({"embedding": _entry(cos_min=0.5, cos_mean=0.9, rel=0.05)})
    assert "mean cosine 0.9" in judge(bent, tol, "distillation", distilled=True)


@pytest.fixture(scope="module")
def all_digits(tmp_path_factory) -> Path:
    X_train, X_test, y_train, y_test = models.digits_data()
    X, y = np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])
    return models.dataset_npz(tmp_path_factory.mktemp("all") / "digits.npz", X, y, "x")


def test_distill_trains_on_every_sample_outside_the_held_out_split_and_is_accepted(
    tmp_path, mlp_path, all_digits
):
    pytest.importorskip("torch")
    report = compress(
        mlp_path,
        "distill",
        dataset=all_digits,
        out_dir=tmp_path,
        options=FAST,
        params={"epochs": 30, "seed": 0},
    )
    [variant] = report.variants
    extra = variant.extra["distill"]
    # 1797 samples: 500 held out, the other 1297 train (not the 128 calibration samples).
    assert report.dataset["evaluation_samples"] == 500
    assert report.dataset["training_samples"] == 1297 == extra["train_rows"]
    assert extra["heldout_rows"] == 500
    fid = variant.fidelity
    # Measured: cosine_min 0.83, top-1 agreement 0.988, accuracy 0.982 vs teacher 0.992.
    assert fid["cosine_min"] < 0.99  # the logit-cosine rule would have rejected it
    assert fid["top1_agreement"] >= 0.97
    assert fid["accuracy_original"] - fid["accuracy"] <= 0.02
    assert variant.status == "accepted", variant.reason
    assert "judged by top-1 agreement and accuracy because distillation changes logits" in (
        variant.reason
    )
    assert fid["rule"] == "decisions"
    assert report.to_dict()["variants"][0]["fidelity"]["rule_text"].startswith("judged by top-1")


def test_the_training_split_never_overlaps_the_held_out_split():
    for n in (2, 3, 10, 256, 360, 1797):
        cal, ev, train = split_indices(n)
        assert not set(ev) & set(train) and not set(ev) & set(cal)
        assert set(cal) <= set(train)
        assert sorted(set(ev) | set(train)) == list(range(n))
    feeds = {"x": np.arange(1797, dtype=np.float32).reshape(1797, 1, 1)}
    cal, ev, train = split_indices(1797, calibration_samples=128, evaluation_samples=500)
    assert (len(cal), len(ev), len(train)) == (128, 500, 1297)
    assert set(feeds["x"][ev].ravel()).isdisjoint(feeds["x"][train].ravel())


def test_distill_refuses_synthetic_inputs(tmp_path, mlp_path):
    report = compress(mlp_path, "distill", out_dir=tmp_path, options=FAST)
    [variant] = report.variants
    assert report.dataset["synthetic"] is True
    assert variant.status == "failed" and variant.not_applicable
    assert "distill needs a real dataset" in variant.reason
    assert "Attach a dataset" in variant.reason

    from compression.engine import distill

    ctx = RecipeContext(
        model_path=mlp_path,
        out_path=tmp_path / "s.onnx",
        calibration={"x": np.zeros((4, 1, 64), np.float32)},
        synthetic=True,
    )
    with pytest.raises(RecipeNotApplicable, match="needs a real dataset"):
        distill.apply(ctx)


def test_auto_includes_distill_only_when_asked(tmp_path, mlp_path):
    default, _ = candidates()
    assert default == [(r, p) for r, p in GRID]
    assert not any("distill" in recipe for recipe, _ in default)

    asked, _ = candidates(include_distill=True)
    assert [r for r, _ in asked if "distill" in r] == ["distill", "distill+int8-dynamic"]
    named, _ = candidates(["distill"])
    assert [r for r, _ in named] == ["distill"]
    assert EngineOptions.from_dict({"include_distill": True}).include_distill

    # Asked for, without a dataset: distill is tried, refused in the report, never hidden.
    report = compress(
        mlp_path,
        "auto",
        out_dir=tmp_path,
        options={**FAST, "include_distill": True, "auto_recipes": ["int8-dynamic", "distill"]},
    )
    assert [v.recipe for v in report.variants] == ["int8-dynamic", "int8-dynamic", "distill"]
    distilled = report.variants[-1]
    assert distilled.status == "failed" and distilled.not_applicable
    assert "needs a real dataset" in distilled.reason
    report = compress(
        mlp_path, "auto", out_dir=tmp_path, options={**FAST, "auto_recipes": ["int8-dynamic"]}
    )
    assert [v.recipe for v in report.variants] == ["int8-dynamic", "int8-dynamic"]
