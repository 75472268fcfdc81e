"""Read an ONNX file, prove it is a valid model that onnxruntime can load, and describe it.

Every later step (data validation, recipes, verification) trusts what ``inspect_model``
returns, so the checks here are strict: the full checker (with shape inference) and a real
onnxruntime session. Errors are ``EngineError`` with the checker's or runtime's own words.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from compression.engine.base import EngineError

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
CHUNK = 1 << 20


@dataclass
class TensorSpec:
    """A model input or output: name, element type and shape (symbolic dims kept as strings,
    unknown dims as None; a dim written as -1 or 0, as Paddle exporters do, is unknown too)."""

    name: str
    dtype: str
    """numpy dtype name, e.g. 'float32' ('unknown' for non-tensor types)."""
    shape: list[int | str | None] | None
    """None when the rank itself is unknown."""

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else ",".join("?" if d is None else str(d) for d in self.shape)
        )
        return f"{self.name} [{dims}] {self.dtype}"


@dataclass
class ModelInfo:
    """What the engine knows about a model file after ``inspect_model``."""

    path: str
    sha256: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    producer_version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameter_count: int
    op_histogram: dict[str, int]
    control_flow_ops: list[str]
    """Control-flow op types present anywhere in the model, nested subgraphs included."""
    subgraph_count: int = 0
    external_data: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def opset(self) -> int:
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["opset"] = self.opset
        return data


def sha256_file(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB chunks so large models never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in it (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for g in iter_graphs(graph):
        yield from g.node


def tensor_spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return TensorSpec(value_info.name, "unknown", None)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = TensorProto.DataType.Name(tensor_type.elem_type).lower()
    if not tensor_type.HasField("shape"):
        return TensorSpec(value_info.name, dtype, None)
    shape: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_value"):
            # Paddle and some TF exporters write -1 (or 0) for a dynamic dim, which ONNX does
            # not define; onnxruntime accepts any size there, so it is a dynamic dim.
            shape.append(None)
        elif dim.HasField("dim_param") and dim.dim_param:
            shape.append(dim.dim_param)
        else:
            shape.append(None)
    return TensorSpec(value_info.name, dtype, shape)


def non_positive_dims(model: onnx.ModelProto, *, rewrite: bool = False) -> int:
    """How many graph input/output dims hold a value <= 0 (a dynamic dim as Paddle writes it);
    with ``rewrite``, turn each into a symbolic dim (``dynamic_<n>``) in place."""
    count = 0
    for value in [*model.graph.input, *model.graph.output]:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                if rewrite:
                    dim.dim_param = f"dynamic_{count}"
                count += 1
    return count


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = {init.name for init in model.graph.initializer}
    return [tensor_spec(vi) for vi in model.graph.input if vi.name not in inits]


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements in every initializer and Constant tensor, subgraphs included."""
    total = 0
    for g in iter_graphs(model.graph):
        for init in g.initializer:
            total += int(np.prod(init.dims)) if init.dims else 1
        for node in g.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        total += int(np.prod(attr.t.dims)) if attr.t.dims else 1
    return total


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        for node in iter_nodes(model.graph)
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def load_model(path: str | Path, *, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with errors an operator can act on (missing, empty, not ONNX, truncated)."""
    path = Path(path)
    if not path.exists():
        raise EngineError(f"model file not found: {path}")
    if not path.is_file():
        raise EngineError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise EngineError(f"{path.name} is empty (0 bytes): not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, or a missing external data file
        raise EngineError(
            f"{path.name} is not a readable ONNX model (truncated or not ONNX at all?): {exc}"
        ) from exc
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise EngineError(
            f"{path.name} is not an ONNX model: it parsed, but holds no graph "
            "(a truncated file or a different format)"
        )
    return model


def check_model(path: str | Path) -> None:
    """The full ONNX checker (including strict shape inference), run on the path so models
    larger than 2 GB and external data work too."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise EngineError(f"{Path(path).name} fails the ONNX checker: {exc}") from exc


def runtime_session(path: str | Path, *, threads: int = 1, optimization: bool = True):
    """An onnxruntime CPU session with a fixed, quiet thread pool (repeatable timings)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if not optimization:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def inspect_model(path: str | Path, *, check_runtime: bool = True) -> ModelInfo:
    """Load, fully check and describe an ONNX model; also open an onnxruntime session unless
    ``check_runtime`` is False. Raises ``EngineError`` with a plain reason on any failure."""
    path = Path(path)
    model = load_model(path, load_external_data=False)
    check_model(path)
    if check_runtime:
        try:
            runtime_session(path)
        except Exception as exc:
            raise EngineError(
                f"{path.name} passes the ONNX checker but onnxruntime cannot load it: {exc}"
            ) from exc
    external = any(
        init.data_location == TensorProto.EXTERNAL
        for g in iter_graphs(model.graph)
        for init in g.initializer
    )
    histogram = op_histogram(model)
    control = sorted({op for op in histogram if op in CONTROL_FLOW_OPS})
    info = ModelInfo(
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        ir_version=int(model.ir_version),
        opsets={op.domain or "": int(op.version) for op in model.opset_import},
        producer=model.producer_name,
        producer_version=model.producer_version,
        inputs=graph_inputs(model),
        outputs=[tensor_spec(vi) for vi in model.graph.output],
        parameter_count=parameter_count(model),
        op_histogram=histogram,
        control_flow_ops=control,
        subgraph_count=sum(1 for _ in iter_graphs(model.graph)) - 1,
        external_data=external,
    )
    if external:
        info.notes.append("weights are stored as external data next to the model file")
    odd = non_positive_dims(model)
    if odd:
        info.notes.append(f"{odd} input/output dim(s) written as -1 or 0 are read as dynamic dims")
    return info
