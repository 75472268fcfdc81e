"""Rewrites that make a model quantizable without changing what it computes.

- ``constants_to_initializers``: exporters often hold weights in ``Constant`` nodes; the
  onnxruntime quantizers only look at initializers, so such weights would silently stay float.
- ``gemm_to_matmul``: dynamic int8 and 4-bit weight quantization only know MatMul, while
  Gemm is how most MLP heads are exported; a Gemm with a constant B becomes MatMul (+ Add).
- dims written as -1 or 0 on graph inputs/outputs (Paddle exports) become symbolic dims.
- shape inference: onnxruntime's ``quant_pre_process`` (symbolic shape inference and basic
  graph optimizations) where it works, ONNX shape inference otherwise, nothing as a last resort.

``preprocess`` applies the first and the third and re-checks the result; recipes call
``gemm_to_matmul`` themselves when they need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.engine.base import EngineError
from compression.engine.inspect import (
    check_model,
    iter_graphs,
    non_positive_dims,
    runtime_session,
)


@dataclass
class Preprocessed:
    path: Path
    constants_moved: int = 0
    shape_inference: str = "none"
    """'onnxruntime' (quant_pre_process), 'onnx' or 'none'."""
    notes: list[str] = field(default_factory=list)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        name = attr.name
        if name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None  # sparse_value / value_string(s): left as Constant nodes


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn every tensor-valued ``Constant`` node into an initializer of the graph it lives in
    (subgraphs included), in place. Returns how many were moved."""
    moved = 0
    for graph in iter_graphs(model.graph):
        outputs = {o.name for o in graph.output}
        keep: list[onnx.NodeProto] = []
        for node in graph.node:
            tensor = None
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = _constant_value(node)
            if tensor is None or node.output[0] in outputs:
                keep.append(node)
                continue
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        if moved:
            del graph.node[:]
            graph.node.extend(keep)
    return moved


def _initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite ``Gemm(A, B, C)`` with a constant 2-D B and transA=0 as ``MatMul(A, B')`` followed
    by ``Add(., C')`` (alpha, beta and transB folded into the constants), in place, subgraphs
    included. Returns the number of Gemm nodes rewritten."""
    rewritten = 0
    for graph in iter_graphs(model.graph):
        inits = _initializer_map(graph)
        counts: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                counts[name] = counts.get(name, 0) + 1
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
                new_nodes.append(node)
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            b_name = node.input[1]
            has_c = len(node.input) > 2 and node.input[2] != ""
            beta = float(attrs.get("beta", 1.0))
            alpha = float(attrs.get("alpha", 1.0))
            if (
                attrs.get("transA", 0)
                or b_name not in inits
                or len(inits[b_name].dims) != 2
                or (has_c and beta != 1.0 and node.input[2] not in inits)
            ):
                new_nodes.append(node)  # nothing constant to fold: leave this Gemm alone
                continue
            b = numpy_helper.to_array(inits[b_name])
            if attrs.get("transB", 0):
                b = b.T
            if alpha != 1.0:
                b = b * np.asarray(alpha, dtype=b.dtype)
            if counts.get(b_name, 0) == 1 and not attrs.get("transB", 0) and alpha == 1.0:
                new_b = b_name  # used by this Gemm only and unchanged: reuse as is
            else:
                new_b = _unique(f"{b_name}_matmul", inits)
                tensor = numpy_helper.from_array(np.ascontiguousarray(b), new_b)
                graph.initializer.append(tensor)
                inits[new_b] = tensor
            base = node.name or node.output[0]
            mm_out = f"{node.output[0]}_matmul" if has_c else node.output[0]
            new_nodes.append(
                helper.make_node("MatMul", [node.input[0], new_b], [mm_out], name=f"{base}_MatMul")
            )
            if has_c:
                c_name = node.input[2]
                if beta != 1.0:
                    c = numpy_helper.to_array(inits[c_name]) * beta
                    c_name = _unique(f"{c_name}_beta", inits)
                    tensor = numpy_helper.from_array(c.astype(b.dtype), c_name)
                    graph.initializer.append(tensor)
                    inits[c_name] = tensor
                new_nodes.append(
                    helper.make_node("Add", [mm_out, c_name], [node.output[0]], name=f"{base}_Add")
                )
            rewritten += 1
        del graph.node[:]
        graph.node.extend(new_nodes)
        if rewritten:
            # Drop initializers only the old Gemms used (replaced by their rewritten copies).
            used = {name for node in graph.node for name in node.input}
            used |= {o.name for o in graph.output} | _names_used_in_subgraphs(graph)
            keep = [init for init in graph.initializer if init.name in used]
            if len(keep) != len(graph.initializer):
                del graph.initializer[:]
                graph.initializer.extend(keep)
    return rewritten


def _names_used_in_subgraphs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                for g in iter_graphs(sub):
                    for n in g.node:
                        names.update(n.input)
    return names


def _unique(name: str, taken: dict) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def _loads(path: Path) -> str | None:
    """None if the model passes the checker and loads in onnxruntime, else the reason."""
    try:
        check_model(path)
        runtime_session(path)
    except Exception as exc:
        return str(exc)
    return None


def preprocess(
    src: str | Path, dst: str | Path, *, work_dir: str | Path | None = None
) -> Preprocessed:
    """Write a quantization-ready copy of ``src`` to ``dst``: Constant weights moved into
    initializers, shapes inferred. The result always passes the checker and loads."""
    src, dst = Path(src), Path(dst)
    work = Path(work_dir) if work_dir else dst.parent
    result = Preprocessed(path=dst)
    model = onnx.load(str(src))
    result.constants_moved = constants_to_initializers(model)
    if result.constants_moved:
        result.notes.append(
            f"{result.constants_moved} Constant node(s) turned into initializers so the "
            "quantizers can see those weights"
        )
    rewritten = non_positive_dims(model, rewrite=True)
    if rewritten:
        result.notes.append(
            f"{rewritten} input/output dim(s) written as -1 or 0 rewritten as symbolic dims "
            "(metadata only; what the model computes is unchanged)"
        )
    stage = work / f"{dst.stem}.constants.onnx"
    onnx.save(model, str(stage))

    attempt = work / f"{dst.stem}.ort-pre.onnx"
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(stage), str(attempt), skip_optimization=False)
        problem = _loads(attempt)
        if problem is None:
            attempt.replace(dst)
            result.shape_inference = "onnxruntime"
            stage.unlink(missing_ok=True)
            return result
        result.notes.append(
            f"onnxruntime pre-processing produced an unusable model ({problem[:200]}); used ONNX shape inference"
        )
    except Exception as exc:
        result.notes.append(
            f"onnxruntime pre-processing failed ({str(exc)[:200]}); used ONNX shape inference"
        )
    attempt.unlink(missing_ok=True)

    try:
        onnx.shape_inference.infer_shapes_path(str(stage), str(attempt))
        problem = _loads(attempt)
        if problem is None:
            attempt.replace(dst)
            result.shape_inference = "onnx"
            stage.unlink(missing_ok=True)
            return result
        result.notes.append(f"ONNX shape inference produced an unusable model ({problem[:200]})")
    except Exception as exc:
        result.notes.append(f"ONNX shape inference failed ({str(exc)[:200]})")
    attempt.unlink(missing_ok=True)

    problem = _loads(stage)
    if problem is not None:
        raise EngineError(f"pre-processing broke the model: {problem}")
    stage.replace(dst)
    result.notes.append("no shape inference: quantizers may skip tensors of unknown type")
    return result


def _outer_references(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes: inputs of its nodes (and of its own
    subgraphs) that it neither produces nor declares as an input or initializer."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    local |= {out for node in graph.node for out in node.output}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                used |= _outer_references(sub)
    return used - local


def sort_topologically(graph: onnx.GraphProto) -> bool:
    """Re-order ``graph.node`` (and every subgraph's) so each node comes after the producers of
    everything it reads, *including what its If/Loop/Scan bodies read from the outer scope*.

    Quantizers and the float16 converter sort graphs by explicit inputs only, so an ``If``
    whose branch reads an outer tensor can land before that tensor's producer, and the checker
    then refuses the model ("Nodes in a graph must be topologically sorted"). The sort is
    stable: a graph already in order is left exactly as it was. Returns True if anything
    moved."""
    changed = False
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                changed |= sort_topologically(sub)
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needs: list[set[int]] = []
    for i, node in enumerate(nodes):
        names = {n for n in node.input if n}
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                names |= _outer_references(sub)
        needs.append({producer[n] for n in names if n in producer and producer[n] != i})
    order: list[int] = []
    placed: set[int] = set()
    pending = list(range(len(nodes)))
    while pending:
        progress = False
        rest = []
        for i in pending:
            if needs[i] <= placed:
                order.append(i)
                placed.add(i)
                progress = True
            else:
                rest.append(i)
        if not progress:  # a cycle: leave the graph to the checker, which will say so
            return changed
        pending = rest
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)
        changed = True
    return changed
