"""Static int8 quantization (QDQ): uint8 activations and int8 weights calibrated on real inputs.

Calibration uses the calibration split only (MinMax, Entropy or Percentile). If the result is
out of tolerance on the evaluation split, a bounded mixed-precision search keeps the most
sensitive nodes in float: every quantized node is scored by how much relative error it *adds*
(error of its output minus the worst error among its inputs, measured once on both models), and
the top 1, 2, 4, ... nodes are excluded until the variant is within tolerance or the rounds run
out. The engine's verification still has the last word.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from compression.engine.base import (
    EngineError,
    Feeds,
    RecipeContext,
    RecipeNotApplicable,
    RecipeOutcome,
)
from compression.engine.data import sample_feed
from compression.engine.host import has_vnni
from compression.engine.inspect import runtime_session
from compression.engine.recipes._common import bool_param, check_cancelled, op_counts, stage
from compression.engine.verify import Tolerance, fidelity, judge, run_samples

NAME = "int8-static"
SUMMARY = "8-bit weights and activations (QDQ) calibrated on your data, float fallback."
METHODS = ("minmax", "entropy", "percentile")
DEFAULTS: dict[str, Any] = {
    "calibration": "minmax",
    "per_channel": True,
    "reduce_range": "auto",
    "op_types": None,
    "nodes_to_exclude": [],
    "fallback": True,
    "max_fallback_rounds": 4,
    "percentile": 99.999,
}
PROBE_SAMPLES = 32


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    from compression.engine.recipes import check_params

    merged = check_params(params, DEFAULTS, NAME)
    merged["calibration"] = str(merged["calibration"]).lower()
    if merged["calibration"] not in METHODS:
        raise EngineError(
            f"recipe '{NAME}': calibration must be one of {', '.join(METHODS)}, "
            f"got {merged['calibration']!r}"
        )
    for key in ("per_channel", "fallback"):
        merged[key] = bool_param(NAME, key, merged[key])
    if merged["reduce_range"] != "auto":
        merged["reduce_range"] = bool_param(NAME, "reduce_range", merged["reduce_range"])
    merged["max_fallback_rounds"] = int(merged["max_fallback_rounds"])
    if not 0 <= merged["max_fallback_rounds"] <= 10:
        raise EngineError(f"recipe '{NAME}': max_fallback_rounds must be between 0 and 10")
    merged["percentile"] = float(merged["percentile"])
    if not 90.0 <= merged["percentile"] <= 100.0:
        raise EngineError(f"recipe '{NAME}': percentile must be between 90 and 100")
    if isinstance(merged["nodes_to_exclude"], str):
        merged["nodes_to_exclude"] = [n for n in merged["nodes_to_exclude"].split(",") if n]
    if isinstance(merged["op_types"], str):
        merged["op_types"] = [t for t in merged["op_types"].split(",") if t]
    return merged


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our per-sample feeds."""

    def __init__(self, feeds: Feeds):
        self.feeds = feeds
        self.n = len(next(iter(feeds.values())))
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.n:
            return None
        sample = sample_feed(self.feeds, self.i)
        self.i += 1
        return sample

    def rewind(self) -> None:
        self.i = 0


def _quantize(source, out_path, params, reduce_range, calibration: Feeds, exclude: list[str]):
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[params["calibration"]]
    extra = (
        {"CalibPercentile": params["percentile"]} if params["calibration"] == "percentile" else {}
    )
    quantize_static(
        str(source),
        str(out_path),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=params["op_types"],
        per_channel=params["per_channel"],
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=method,
        extra_options=extra,
    )


def _expose(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model with extra graph outputs for ``names`` (types left for onnxruntime to infer)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model.SerializeToString()


def sensitivity(float_path, quant_path, feeds: Feeds) -> list[tuple[str, float]]:
    """Quantizable nodes of the float model ranked by the relative error they add in the
    quantized model (most harmful first)."""
    import onnxruntime as ort

    float_model = onnx.load(str(float_path))
    quant_model = onnx.load(str(quant_path))
    produced_q = {out for node in quant_model.graph.node for out in node.output}
    nodes = [
        node
        for node in float_model.graph.node
        if node.name and node.output and node.output[0] in produced_q and node.op_type != "Constant"
    ]
    names = sorted({node.output[0] for node in nodes})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sample = {k: v[:PROBE_SAMPLES] for k, v in feeds.items()}

    def outputs(model):
        session = ort.InferenceSession(
            _expose(model, names), options, providers=["CPUExecutionProvider"]
        )
        return run_samples(session, sample)

    ref, got = outputs(float_model), outputs(quant_model)
    error: dict[str, float] = {}
    for name in names:
        a, b = ref[name].astype(np.float64), got[name].astype(np.float64)
        norm = np.linalg.norm(a)
        error[name] = (
            float(np.linalg.norm(a - b) / norm) if norm else float(np.abs(b).max(initial=0))
        )
    scores = []
    for node in nodes:
        upstream = max((error.get(i, 0.0) for i in node.input), default=0.0)
        scores.append((node.name, error[node.output[0]] - upstream))
    return sorted(scores, key=lambda kv: -kv[1])


PER_CHANNEL_OPSET = 13
"""Per-channel QDQ writes ``DequantizeLinear(axis=...)``, which ONNX defines from opset 13."""


def _main_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def _opset_for_per_channel(
    model: onnx.ModelProto, ctx: RecipeContext, notes: list[str]
) -> tuple[onnx.ModelProto, bool]:
    """The model at opset >= 13, so per-channel QDQ is valid, and whether that worked.

    Older exports (Paddle's opset 11/12: ppocr, ddddocr) are converted with
    ``onnx.version_converter``; the converted model must pass the checker and load in
    onnxruntime. If it does not, per-channel is turned off (per-tensor QDQ is valid from opset
    10) and a note says why."""
    opset = _main_opset(model)
    if opset >= PER_CHANNEL_OPSET:
        return model, True
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        path = stage(converted, ctx, "int8_static.opset13.onnx")
        onnx.checker.check_model(str(path), full_check=True)
        runtime_session(path)
        path.unlink(missing_ok=True)
    except Exception as exc:
        notes.append(
            f"per-channel off: per-channel QDQ needs opset {PER_CHANNEL_OPSET} and converting "
            f"this opset-{opset} model failed ({type(exc).__name__}: {str(exc)[:160]}); "
            "quantized per tensor"
        )
        return model, False
    notes.append(
        f"model converted from opset {opset} to {PER_CHANNEL_OPSET} (onnx.version_converter): "
        "per-channel QDQ needs DequantizeLinear with an axis"
    )
    return converted, True


def apply(ctx: RecipeContext) -> RecipeOutcome:
    params = validate_params(ctx.params)
    if not ctx.calibration:
        raise RecipeNotApplicable(
            "int8-static needs calibration inputs (a dataset or input shapes)"
        )
    notes: list[str] = []
    model = onnx.load(str(ctx.model_path))
    counts = op_counts(model)
    main_ops = {node.op_type for node in model.graph.node}
    if not main_ops & {"Conv", "MatMul", "Gemm", "ConvTranspose", "Attention"}:
        where = (
            " outside If/Loop/Scan subgraphs, which static quantization does not cover"
            if main_ops & {"If", "Loop", "Scan"}
            else ""
        )
        raise RecipeNotApplicable(f"no Conv, MatMul or Gemm node{where}: nothing to quantize")
    if any(counts.get(op) for op in ("If", "Loop", "Scan")):
        notes.append(
            "ops inside If/Loop/Scan subgraphs stay in float (static QDQ covers the main graph)"
        )
    reduce_range = params["reduce_range"]
    if reduce_range == "auto":
        reduce_range = not has_vnni()
        if reduce_range:
            notes.append("reduce_range on: this CPU has no VNNI (7-bit weights avoid overflow)")
    if params["per_channel"]:
        model, per_channel_ok = _opset_for_per_channel(model, ctx, notes)
        if not per_channel_ok:
            params = {**params, "per_channel": False}
    source = stage(model, ctx, "int8_static.input.onnx")
    exclude = list(params["nodes_to_exclude"])
    ctx.progress(0.1)
    try:
        _quantize(source, ctx.out_path, params, reduce_range, ctx.calibration, exclude)
    except Exception as exc:
        raise EngineError(f"onnxruntime's static quantizer failed: {exc}") from exc
    ctx.progress(0.5)

    extra: dict[str, Any] = {"excluded_nodes": [], "fallback_rounds": 0}
    if params["fallback"] and ctx.evaluation and params["max_fallback_rounds"]:
        tolerance = Tolerance(
            cosine_min=float(ctx.settings.get("cosine_min", 0.99)),
            top1_min=float(ctx.settings.get("top1_min", 0.99)),
        )
        reference = run_samples(runtime_session(source), ctx.evaluation)

        def problem_of(path) -> str | None:
            outs = run_samples(runtime_session(path), ctx.evaluation)
            return judge(
                fidelity(reference, outs, ctx.evaluation_labels), tolerance, "quantization"
            )

        problem = problem_of(ctx.out_path)
        if problem:
            ranked = [
                name
                for name, score in sensitivity(source, ctx.out_path, ctx.evaluation)
                if score > 0
            ]
            ranked = [n for n in ranked if n not in exclude]
            notes.append(
                f"fully quantized model out of tolerance ({problem}); trying float fallback"
            )
            trial = ctx.out_path.with_name(ctx.out_path.stem + ".trial.onnx")
            k = 1
            for round_no in range(1, params["max_fallback_rounds"] + 1):
                check_cancelled(ctx)
                if not ranked:
                    break
                chosen = ranked[:k]
                _quantize(source, trial, params, reduce_range, ctx.calibration, exclude + chosen)
                extra["fallback_rounds"] = round_no
                problem = problem_of(trial)
                ctx.progress(0.5 + 0.5 * round_no / params["max_fallback_rounds"])
                if problem is None:
                    trial.replace(ctx.out_path)
                    exclude += chosen
                    extra["excluded_nodes"] = chosen
                    notes.append(
                        f"kept {len(chosen)} sensitive node(s) in float: {', '.join(chosen)}"
                    )
                    break
                if k >= len(ranked):
                    break
                k = min(len(ranked), k * 2)
            trial.unlink(missing_ok=True)
            if problem:
                notes.append(
                    f"gave up after {extra['fallback_rounds']} fallback round(s): still {problem}"
                )
    ctx.progress(1.0)
    return RecipeOutcome(
        path=ctx.out_path,
        params={**params, "reduce_range": reduce_range, "nodes_to_exclude": exclude},
        notes=notes,
        extra=extra,
    )
