"""Unstructured L1 magnitude pruning: zero the smallest weights until a sparsity target is met.

The tensor keeps its shape, so a dense runtime such as onnxruntime runs it exactly as fast as
before. What the operator gains is a file that compresses much better (artifacts are shipped
gzip- or zstd-compressed) and a starting point for sparse kernels or later quantization. The
outcome therefore reports the compressed sizes of the original and of the variant side by side.

Only weight tensors are pruned: the constant inputs that carry a layer's weights (Conv and
ConvTranspose kernels, Gemm and MatMul matrices, LSTM/GRU/RNN input and recurrent weights),
found through any chain of layout-only ops (Transpose, Reshape, Cast, ...). Biases, normalization
parameters, shape constants, integer tensors and tensors smaller than ``min_elements`` are left
alone. Initializers and Constant nodes inside subgraphs (If/Loop/Scan bodies) are pruned too.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compression.engine.base import (
    Cancelled,
    EngineError,
    RecipeContext,
    RecipeNotApplicable,
    RecipeOutcome,
)

NAME = "prune-magnitude"
SUMMARY = "Zero the smallest-magnitude weights (unstructured); shrinks the compressed artifact."
DEFAULTS: dict[str, Any] = {"sparsity": 0.5, "scope": "global", "min_elements": 256}
SCOPES = ("global", "per_layer")

# (op_type, input index) pairs whose constant input is a learned weight matrix or kernel.
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "LSTM": (1, 2),
    "GRU": (1, 2),
    "RNN": (1, 2),
}
# Ops that only move or re-type values: a weight may pass through them on its way to a layer.
LAYOUT_OPS = frozenset(
    {"Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten", "CastLike"}
)
FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)
DENSE_RUNTIME_NOTE = (
    "Unstructured sparsity keeps every tensor's shape: dense runtimes such as onnxruntime run "
    "the variant no faster and load it into the same memory; the gain is the compressed "
    "download size (see extra.compressed)."
)


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fill in defaults and check ranges; raise ``EngineError`` with a plain message otherwise."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise EngineError(
            f"{NAME}: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    merged = {**DEFAULTS, **params}
    sparsity = float(merged["sparsity"])
    if not 0.0 < sparsity < 1.0:
        raise EngineError(f"{NAME}: sparsity must be between 0 and 1 (exclusive), got {sparsity}")
    if merged["scope"] not in SCOPES:
        raise EngineError(f"{NAME}: scope must be one of {SCOPES}, got {merged['scope']!r}")
    min_elements = int(merged["min_elements"])
    if min_elements < 1:
        raise EngineError(f"{NAME}: min_elements must be at least 1, got {min_elements}")
    return {"sparsity": sparsity, "scope": merged["scope"], "min_elements": min_elements}


# --- graph walking shared with prune_structured ----------------------------------------------


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and every subgraph nested in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def consumers_by_name(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Map a value name to (node, input index) of every node, in any graph, that reads it.

    ONNX forbids a subgraph from redefining an outer name, so one flat map is exact.
    """
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            for index, name in enumerate(node.input):
                if name:
                    consumers.setdefault(name, []).append((node, index))
    return consumers


def compressed_sizes(original: bytes, variant: bytes) -> dict[str, Any]:
    """Raw, gzip and (if ``zstandard`` is installed) zstd sizes of two files, with ratios."""
    sizes: dict[str, Any] = {
        "original_bytes": len(original),
        "variant_bytes": len(variant),
        "original_gzip_bytes": len(gzip.compress(original, compresslevel=6)),
        "variant_gzip_bytes": len(gzip.compress(variant, compresslevel=6)),
    }
    sizes["gzip_ratio"] = round(sizes["variant_gzip_bytes"] / sizes["original_gzip_bytes"], 4)
    try:
        import zstandard
    except ImportError:
        sizes["zstd"] = "not measured: the optional 'zstandard' package is not installed"
    else:
        compressor = zstandard.ZstdCompressor(level=9)
        sizes["original_zstd_bytes"] = len(compressor.compress(original))
        sizes["variant_zstd_bytes"] = len(compressor.compress(variant))
        sizes["zstd_ratio"] = round(sizes["variant_zstd_bytes"] / sizes["original_zstd_bytes"], 4)
    return sizes


# --- pruning ------------------------------------------------------------------------------------


@dataclass
class _Weight:
    """One prunable tensor: where it lives (an initializer or a Constant node's value)."""

    name: str
    proto: onnx.TensorProto
    array: np.ndarray


def _constant_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    for graph in iter_graphs(model.graph):
        for init in graph.initializer:
            yield init.name, init
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        yield node.output[0], attr.t


def _feeds_only_weight_inputs(
    name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]], depth: int = 0
) -> bool:
    """True if every use of ``name`` ends, through layout-only ops, in a layer's weight input."""
    uses = consumers.get(name, [])
    if not uses or depth > 8:
        return False
    for node, index in uses:
        if index in WEIGHT_INPUTS.get(node.op_type, ()) and node.domain in ("", "ai.onnx"):
            continue
        if (
            node.op_type in LAYOUT_OPS
            and index == 0
            and node.output
            and _feeds_only_weight_inputs(node.output[0], consumers, depth + 1)
        ):
            continue
        return False
    return True


def find_prunable_weights(model: onnx.ModelProto, min_elements: int) -> tuple[list[_Weight], int]:
    """The weight tensors this recipe may prune, and how many float constants it skipped."""
    consumers = consumers_by_name(model)
    weights: list[_Weight] = []
    skipped = 0
    seen: set[str] = set()
    for name, proto in _constant_tensors(model):
        if name in seen or proto.data_type not in FLOAT_TYPES:
            continue
        seen.add(name)
        if proto.data_location == onnx.TensorProto.EXTERNAL:
            raise EngineError(
                f"{NAME}: tensor {name!r} is stored as external data; load the model with its "
                "data files next to it"
            )
        dims = list(proto.dims)
        size = int(np.prod(dims)) if dims else 1
        if len(dims) < 2 or size < min_elements or not _feeds_only_weight_inputs(name, consumers):
            skipped += 1
            continue
        weights.append(_Weight(name, proto, numpy_helper.to_array(proto)))
    return weights, skipped


def _masks(weights: list[_Weight], sparsity: float, scope: str) -> list[np.ndarray]:
    """Boolean keep-masks that zero exactly round(sparsity * n) of the smallest |w|."""
    if scope == "per_layer":
        masks = []
        for weight in weights:
            magnitudes = np.abs(weight.array.astype(np.float32)).ravel()
            k = int(round(sparsity * magnitudes.size))
            keep = np.ones(magnitudes.size, dtype=bool)
            if k:
                keep[np.argpartition(magnitudes, k - 1)[:k]] = False
            masks.append(keep.reshape(weight.array.shape))
        return masks
    # Global: one threshold over all weights, so layers with many small weights lose more.
    magnitudes = np.concatenate([np.abs(w.array.astype(np.float32)).ravel() for w in weights])
    k = int(round(sparsity * magnitudes.size))
    keep = np.ones(magnitudes.size, dtype=bool)
    if k:
        keep[np.argpartition(magnitudes, k - 1)[:k]] = False
    masks, start = [], 0
    for weight in weights:
        size = weight.array.size
        masks.append(keep[start : start + size].reshape(weight.array.shape))
        start += size
    return masks


def apply(ctx: RecipeContext) -> RecipeOutcome:
    """Prune ``ctx.model_path`` to ``params['sparsity']`` and write it to ``ctx.out_path``."""
    params = validate_params(dict(ctx.params))
    sparsity, scope = params["sparsity"], params["scope"]
    original_bytes = Path(ctx.model_path).read_bytes()
    model = onnx.load_from_string(original_bytes)
    weights, skipped = find_prunable_weights(model, params["min_elements"])
    if not weights:
        raise RecipeNotApplicable(
            "no prunable weights: no float Conv/Gemm/MatMul/LSTM weight tensor with at least "
            f"{params['min_elements']} elements and 2+ dimensions was found"
        )
    ctx.log(f"{NAME}: pruning {len(weights)} weight tensors to {sparsity:.0%} ({scope})")
    masks = _masks(weights, sparsity, scope)
    per_tensor: dict[str, float] = {}
    zeros = total = 0
    fully_zeroed = []
    for index, (weight, keep) in enumerate(zip(weights, masks, strict=True)):
        if ctx.cancelled():
            raise Cancelled(f"{NAME} cancelled")
        pruned = np.where(keep, weight.array, np.zeros((), dtype=weight.array.dtype))
        weight.proto.CopyFrom(numpy_helper.from_array(pruned, weight.proto.name))
        tensor_zeros = int(np.count_nonzero(pruned == 0))
        zeros += tensor_zeros
        total += pruned.size
        per_tensor[weight.name] = round(tensor_zeros / pruned.size, 4)
        if tensor_zeros == pruned.size:
            fully_zeroed.append(weight.name)
        ctx.progress((index + 1) / len(weights) * 0.8)

    variant_bytes = model.SerializeToString()
    Path(ctx.out_path).write_bytes(variant_bytes)
    compressed = compressed_sizes(original_bytes, variant_bytes)
    ctx.progress(1.0)

    achieved = zeros / total
    notes = [
        f"pruned {len(weights)} weight tensors ({total:,} values) to {achieved:.1%} zeros "
        f"({scope}); {skipped} other float tensors (biases, norms, small or non-weight "
        "constants) left untouched",
        DENSE_RUNTIME_NOTE,
        f"gzip size {compressed['original_gzip_bytes']:,} -> {compressed['variant_gzip_bytes']:,} "
        f"bytes ({compressed['gzip_ratio']:.2f}x)",
    ]
    if fully_zeroed:
        notes.append(
            "global threshold zeroed these tensors entirely (try scope=per_layer): "
            + ", ".join(fully_zeroed[:5])
        )
    return RecipeOutcome(
        path=Path(ctx.out_path),
        params=params,
        notes=notes,
        extra={
            "sparsity": round(achieved, 4),
            "target_sparsity": sparsity,
            "pruned_tensors": len(weights),
            "pruned_values": total,
            "sparsity_per_tensor": per_tensor,
            "compressed": compressed,
        },
    )
