"""4-bit weight-only quantization: MatMul weights packed in blocks as MatMulNBits.

Activations stay float; each block of ``block_size`` weights along K shares one scale (and a
zero point when asymmetric). Only MatMul with a constant 2-D weight qualifies, so Gemm with a
constant B is first rewritten as MatMul + Add (this is what makes the recipe useful for MLPs).
Models with no such MatMul are refused with ``RecipeNotApplicable``.
"""

from __future__ import annotations

from typing import Any

import onnx

from compression.engine.base import EngineError, RecipeContext, RecipeNotApplicable, RecipeOutcome
from compression.engine.inspect import iter_graphs
from compression.engine.preprocess import gemm_to_matmul
from compression.engine.recipes._common import bool_param, op_counts, size_note

NAME = "int4-weight"
SUMMARY = "4-bit block-quantized MatMul weights (MatMulNBits)."
BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULTS: dict[str, Any] = {
    "block_size": 32,
    "symmetric": True,
    "accuracy_level": None,
    "gemm_to_matmul": True,
    "nodes_to_exclude": [],
}


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    from compression.engine.recipes import check_params

    merged = check_params(params, DEFAULTS, NAME)
    merged["block_size"] = int(merged["block_size"])
    if merged["block_size"] not in BLOCK_SIZES:
        raise EngineError(f"recipe '{NAME}': block_size must be one of {BLOCK_SIZES}")
    for key in ("symmetric", "gemm_to_matmul"):
        merged[key] = bool_param(NAME, key, merged[key])
    if merged["accuracy_level"] is not None:
        merged["accuracy_level"] = int(merged["accuracy_level"])
        if merged["accuracy_level"] not in (0, 1, 2, 3, 4):
            raise EngineError(f"recipe '{NAME}': accuracy_level must be 0-4 (4 = int8 compute)")
    if isinstance(merged["nodes_to_exclude"], str):
        merged["nodes_to_exclude"] = [n for n in merged["nodes_to_exclude"].split(",") if n]
    return merged


def eligible_matmuls(model: onnx.ModelProto) -> int:
    """MatMul nodes whose B is a constant 2-D float initializer of their own graph."""
    count = 0
    for graph in iter_graphs(model.graph):
        inits = {i.name: i for i in graph.initializer}
        for node in graph.node:
            b = inits.get(node.input[1]) if node.op_type == "MatMul" else None
            if b is not None and len(b.dims) == 2 and b.data_type == onnx.TensorProto.FLOAT:
                count += 1
    return count


def apply(ctx: RecipeContext) -> RecipeOutcome:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    params = validate_params(ctx.params)
    notes: list[str] = []
    model = onnx.load(str(ctx.model_path))
    if params["gemm_to_matmul"]:
        rewritten = gemm_to_matmul(model)
        if rewritten:
            notes.append(
                f"{rewritten} Gemm node(s) rewritten as MatMul+Add so their weights qualify"
            )
    if not eligible_matmuls(model):
        raise RecipeNotApplicable(
            "no MatMul with a constant 2-D float weight (Conv and other ops are not covered by "
            "4-bit weight quantization)"
        )
    ctx.progress(0.2)
    try:
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=params["block_size"],
            is_symmetric=params["symmetric"],
            accuracy_level=params["accuracy_level"],
            nodes_to_exclude=params["nodes_to_exclude"],
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(ctx.out_path), use_external_data_format=False)
    except Exception as exc:
        raise EngineError(f"onnxruntime's 4-bit quantizer failed: {exc}") from exc
    out = onnx.load(str(ctx.out_path), load_external_data=False)
    quantized = op_counts(out).get("MatMulNBits", 0)
    if not quantized:
        raise RecipeNotApplicable(
            "the 4-bit quantizer found no MatMul it could pack (weights too small for the block "
            "size, or not constant)"
        )
    left = eligible_matmuls(out)
    if left:
        notes.append(f"{left} MatMul node(s) kept in float (too small or excluded)")
    note = size_note(ctx.model_path, ctx.out_path, NAME)
    if note:
        notes.append(note)
    ctx.progress(1.0)
    return RecipeOutcome(
        path=ctx.out_path, params=params, notes=notes, extra={"quantized_nodes": quantized}
    )
