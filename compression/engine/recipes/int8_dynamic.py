"""Dynamic int8 quantization: int8 weights, activations quantized at run time per batch.

Needs no calibration data. Conv is excluded by default: ConvInteger has no fast CPU kernel in
onnxruntime and usually runs slower than the float Conv. Gemm with a constant weight is first
rewritten as MatMul + Add, because the dynamic quantizer only knows MatMul (without this, the
typical exported MLP would not be quantized at all). On CPUs without VNNI the 7-bit
``reduce_range`` mode avoids int16 overflow in the u8*s8 pairwise sums.
"""

from __future__ import annotations

from typing import Any

import onnx

from compression.engine.base import EngineError, RecipeContext, RecipeNotApplicable, RecipeOutcome
from compression.engine.host import has_vnni
from compression.engine.preprocess import gemm_to_matmul
from compression.engine.recipes._common import (
    bool_param,
    check_cancelled,
    op_counts,
    size_note,
    stage,
)
from compression.engine.verify import QUANTIZED_OPS

NAME = "int8-dynamic"
SUMMARY = "8-bit weights, activations quantized on the fly; no calibration data needed."
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather")
DEFAULTS: dict[str, Any] = {
    "per_channel": False,
    "reduce_range": "auto",
    "include_conv": False,
    "op_types": None,
    "nodes_to_exclude": [],
    "gemm_to_matmul": True,
}


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    from compression.engine.recipes import check_params

    merged = check_params(params, DEFAULTS, NAME)
    for key in ("per_channel", "include_conv", "gemm_to_matmul"):
        merged[key] = bool_param(NAME, key, merged[key])
    if merged["reduce_range"] != "auto":
        merged["reduce_range"] = bool_param(NAME, "reduce_range", merged["reduce_range"])
    if merged["op_types"] is not None:
        if isinstance(merged["op_types"], str):
            merged["op_types"] = [t.strip() for t in merged["op_types"].split(",") if t.strip()]
        merged["op_types"] = list(merged["op_types"])
    if isinstance(merged["nodes_to_exclude"], str):
        merged["nodes_to_exclude"] = [n for n in merged["nodes_to_exclude"].split(",") if n]
    return merged


def apply(ctx: RecipeContext) -> RecipeOutcome:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    params = validate_params(ctx.params)
    notes: list[str] = []
    model = onnx.load(str(ctx.model_path))
    if params["gemm_to_matmul"]:
        rewritten = gemm_to_matmul(model)
        if rewritten:
            notes.append(
                f"{rewritten} Gemm node(s) rewritten as MatMul+Add so they can be quantized"
            )
    control_flow = {n for n in op_counts(model) if n in ("If", "Loop", "Scan")}
    source = stage(model, ctx, "int8_dynamic.input.onnx")
    check_cancelled(ctx)

    op_types = list(params["op_types"] or DEFAULT_OP_TYPES)
    if params["include_conv"] and "Conv" not in op_types:
        op_types.append("Conv")
    elif not params["include_conv"] and "Conv" in op_types:
        op_types.remove("Conv")
    if "Conv" not in op_types and op_counts(model).get("Conv"):
        notes.append("Conv excluded: ConvInteger is usually slower than float Conv on CPUs")
    reduce_range = params["reduce_range"]
    if reduce_range == "auto":
        reduce_range = not has_vnni()
        if reduce_range:
            notes.append("reduce_range on: this CPU has no VNNI (7-bit weights avoid overflow)")
    ctx.progress(0.2)
    try:
        quantize_dynamic(
            str(source),
            str(ctx.out_path),
            op_types_to_quantize=op_types,
            per_channel=params["per_channel"],
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=params["nodes_to_exclude"],
            extra_options={"EnableSubgraph": bool(control_flow), "MatMulConstBOnly": True},
        )
    except Exception as exc:
        raise EngineError(f"onnxruntime's dynamic quantizer failed: {exc}") from exc
    ctx.progress(0.9)
    out = onnx.load(str(ctx.out_path), load_external_data=False)
    counts = op_counts(out)
    quantized = sum(n for op, n in counts.items() if op in QUANTIZED_OPS)
    if not quantized:
        raise RecipeNotApplicable(
            f"nothing to quantize: the model has no {', '.join(op_types)} node with constant "
            "float weights"
        )
    if control_flow:
        notes.append(f"subgraphs of {', '.join(sorted(control_flow))} quantized too")
    note = size_note(ctx.model_path, ctx.out_path, NAME)
    if note:
        notes.append(note)
    ctx.progress(1.0)
    return RecipeOutcome(
        path=ctx.out_path,
        params={**params, "reduce_range": reduce_range, "op_types": op_types},
        notes=notes,
        extra={"quantized_nodes": quantized},
    )
