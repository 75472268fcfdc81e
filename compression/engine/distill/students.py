"""Student graphs for distillation, built and adapted as plain ONNX (onnx + numpy, no torch).

A student is always an ONNX model whose float initializers the trainer updates in place, so the
variant keeps exactly the graph it started from: the teacher's input and output names, element
types and declared shapes (symbolic batch dimension included), the teacher's opset, and nothing
an exporter could add or rename. Two sources:

- ``generate_student``: an MLP of given ``widths`` for vector inputs, or a small CNN (3x3 Conv,
  Relu, 2x2 MaxPool stages, channels scaled by ``width_multiplier``) for one NCHW image input.
  Inputs are standardised inside the graph with frozen statistics of the training data, so raw
  pixel or sensor ranges train as well as normalised ones.
- ``adapt_uploaded_student``: an operator's ONNX architecture, checked against the teacher's
  signature, with its inputs and outputs renamed to the teacher's when only the names differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compression.engine.base import RecipeNotApplicable

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
)
CNN_BASE_CHANNELS = (16, 32, 64, 128, 256)
# Generated students use ops whose semantics have not changed since opset 7 in the ways we use
# them (Gemm with a bias, Conv, MaxPool, Flatten, Reshape with a shape input, Softmax on the last
# axis of a rank-2 tensor), so they can be written at the teacher's own opset.
MIN_STUDENT_OPSET = 7


@dataclass
class OutputSpec:
    """How one teacher output is learnt."""

    name: str
    shape: tuple[int, ...]
    """The output's shape without its batch axis, as observed on the data."""
    kind: str
    """'class' (rank-2 scores: KL on softened distributions) or 'regression' (MSE)."""
    form: str = "logits"
    """For 'class': what the teacher emits, 'logits', 'probs' (after Softmax) or 'logprobs'."""
    train_tensor: str = ""
    """The student tensor the loss reads (a generated student's pre-Softmax logits)."""
    student_form: str = "logits"
    """What ``train_tensor`` holds: 'logits', or 'probs' whose log gives logits."""


@dataclass
class Student:
    """A student graph ready to train, with what the trainer must know about it."""

    model: onnx.ModelProto
    source: str
    """'generated-mlp', 'generated-cnn' or 'uploaded'."""
    frozen: set[str] = field(default_factory=set)
    """Float initializers the trainer must not update (standardisation statistics)."""
    notes: list[str] = field(default_factory=list)


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not also initializers (old exporters list both)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def declared_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value's declared dims: ints, symbolic names, or None when unknown."""
    if not value.type.tensor_type.HasField("shape"):
        return []
    dims: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def elem_type(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def count_params(model: onnx.ModelProto) -> int:
    """Number of float weights: initializers and Constant tensors, subgraphs included."""
    total = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal total
        for init in graph.initializer:
            if init.data_type in FLOAT_TYPES:
                total += math.prod(init.dims)
        for node in graph.node:
            for attr in node.attribute:
                if (
                    node.op_type == "Constant"
                    and attr.type == onnx.AttributeProto.TENSOR
                    and attr.t.data_type in FLOAT_TYPES
                ):
                    total += math.prod(attr.t.dims)
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    return total


def classify_output(name: str, values: np.ndarray, loss: str, teacher_type: int) -> OutputSpec:
    """Decide how to learn one teacher output from what it looks like on the training data."""
    if teacher_type not in FLOAT_TYPES:
        raise RecipeNotApplicable(
            f"distill trains float outputs only; the teacher's output {name!r} is "
            f"{TensorProto.DataType.Name(teacher_type)}"
        )
    shape = tuple(int(d) for d in values.shape[1:])
    is_scores = values.ndim == 2 and values.shape[1] >= 2
    kind = {"kl": "class", "mse": "regression"}.get(loss, "class" if is_scores else "regression")
    if kind == "class" and not is_scores:
        raise RecipeNotApplicable(
            f"distill: loss 'kl' needs [N, C] class scores, but output {name!r} has shape "
            f"[N, {', '.join(map(str, shape))}]; use loss 'mse' or 'auto'"
        )
    form = "logits"
    if kind == "class":
        v = values.astype(np.float64)
        if v.min() >= -1e-6 and v.max() <= 1 + 1e-6 and np.allclose(v.sum(axis=1), 1, atol=1e-3):
            form = "probs"
        elif v.max() <= 1e-6:
            top = v.max(axis=1, keepdims=True)
            lse = (top + np.log(np.exp(v - top).sum(axis=1, keepdims=True)))[:, 0]
            if np.allclose(lse, 0, atol=1e-3):
                form = "logprobs"
    return OutputSpec(name=name, shape=shape, kind=kind, form=form, train_tensor=name)


class _GraphBuilder:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.frozen: set[str] = set()

    def const(self, name: str, array: np.ndarray, frozen: bool = False) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        if frozen:
            self.frozen.add(name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def gemm(
        self,
        x: str,
        fan_in: int,
        fan_out: int,
        name: str,
        relu_gain: bool,
        output: str | None = None,
    ) -> str:
        # He-uniform for layers followed by Relu, LeCun-uniform for the linear heads.
        bound = math.sqrt((6.0 if relu_gain else 3.0) / fan_in)
        w = self.rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        return self.node(
            "Gemm",
            [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
            output or name,
            transB=1,
        )

    def conv(self, x: str, c_in: int, c_out: int, name: str) -> str:
        bound = math.sqrt(6.0 / (c_in * 9))
        w = self.rng.uniform(-bound, bound, (c_out, c_in, 3, 3)).astype(np.float32)
        b = np.zeros(c_out, dtype=np.float32)
        return self.node(
            "Conv",
            [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
            name,
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        )


def _standardise(
    b: _GraphBuilder, x: str, data: np.ndarray, axes: tuple[int, ...], name: str
) -> str:
    """(x - mean) * inv_std with frozen statistics.

    A feature whose std is below a tenth of the largest one is scaled as if it had that std:
    an almost-always-zero pixel must not turn its rare non-zero values into huge activations.
    """
    data = data.astype(np.float64)
    mean = data.mean(axis=axes, keepdims=True)[0:1]
    std = data.std(axis=axes, keepdims=True)[0:1]
    floor = max(float(std.max()) * 1e-1, 1e-6)
    inv = 1.0 / np.maximum(std, floor)
    centred = b.node(
        "Sub", [x, b.const(f"{name}.mean", mean.astype(np.float32), True)], f"{name}.c"
    )
    return b.node("Mul", [centred, b.const(f"{name}.inv_std", inv.astype(np.float32), True)], name)


def _to_float(b: _GraphBuilder, name: str, etype: int) -> str:
    if etype == TensorProto.FLOAT:
        return name
    return b.node("Cast", [name], f"{name}.float", to=TensorProto.FLOAT)


def _heads(
    b: _GraphBuilder, features: str, width: int, specs: list[OutputSpec], out_types: list[int]
) -> None:
    """One linear head per teacher output, normalised, reshaped and re-typed to match it."""
    for i, (spec, etype) in enumerate(zip(specs, out_types, strict=True)):
        steps: list[tuple[str, list[str], dict]] = []
        if spec.kind == "class" and spec.form != "logits":
            steps.append(("Softmax" if spec.form == "probs" else "LogSoftmax", [], {"axis": 1}))
        if len(spec.shape) != 1:
            shape = b.const(f"head{i}.shape", np.array([-1, *spec.shape], dtype=np.int64))
            steps.append(("Reshape", [shape], {}))
        if etype != TensorProto.FLOAT:
            steps.append(("Cast", [], {"to": etype}))
        # The last node writes the teacher's output name itself: no trailing Identity.
        y = b.gemm(
            features,
            width,
            math.prod(spec.shape),
            f"head{i}",
            relu_gain=False,
            output=spec.name if not steps else None,
        )
        spec.train_tensor = y
        for k, (op_type, extra, attrs) in enumerate(steps):
            out = spec.name if k == len(steps) - 1 else f"head{i}.{op_type.lower()}"
            y = b.node(op_type, [y, *extra], out, **attrs)


def generate_student(
    teacher: onnx.ModelProto,
    train: dict[str, np.ndarray],
    specs: list[OutputSpec],
    architecture: str,
    widths: list[int],
    width_multiplier: float,
    seed: int,
) -> Student:
    """Build an MLP or CNN student with the teacher's exact input/output signature."""
    inputs = graph_inputs(teacher)
    for value in inputs:
        if elem_type(value) not in FLOAT_TYPES:
            raise RecipeNotApplicable(
                f"distill can generate students for float inputs only; input {value.name!r} is "
                f"{TensorProto.DataType.Name(elem_type(value))}: upload a student (student_path)"
            )
    if architecture == "auto":
        architecture = "cnn" if len(inputs) == 1 and train[inputs[0].name].ndim == 4 else "mlp"
    if architecture == "cnn" and (len(inputs) != 1 or train[inputs[0].name].ndim != 4):
        raise RecipeNotApplicable(
            "distill: architecture 'cnn' needs exactly one NCHW image input; "
            f"the teacher has {[(v.name, list(train[v.name].shape[1:])) for v in inputs]}"
        )

    b = _GraphBuilder(np.random.default_rng(seed))
    notes: list[str] = []
    if architecture == "mlp":
        parts, width = [], 0
        for value in inputs:
            x = _to_float(b, value.name, elem_type(value))
            data = train[value.name]
            if data.ndim != 2:
                x = b.node("Flatten", [x], f"{value.name}.flat", axis=1)
                data = data.reshape(len(data), -1)
            parts.append(_standardise(b, x, data, (0,), f"{value.name}.norm"))
            width += data.shape[1]
        x = parts[0] if len(parts) == 1 else b.node("Concat", parts, "features.concat", axis=1)
        for i, w in enumerate(widths):
            x = b.node("Relu", [b.gemm(x, width, int(w), f"fc{i}", relu_gain=True)], f"fc{i}.relu")
            width = int(w)
        notes.append(f"generated MLP student: widths {list(widths)}")
    else:
        value = inputs[0]
        data = train[value.name]
        _, c_in, h, w = data.shape
        x = _standardise(
            b, _to_float(b, value.name, elem_type(value)), data, (0, 2, 3), "input.norm"
        )
        channels = []
        for stage, base in enumerate(CNN_BASE_CHANNELS):
            c_out = max(1, round(base * width_multiplier))
            x = b.node("Relu", [b.conv(x, c_in, c_out, f"conv{stage}")], f"conv{stage}.relu")
            if h >= 2 and w >= 2:
                x = b.node("MaxPool", [x], f"pool{stage}", kernel_shape=[2, 2], strides=[2, 2])
                h, w = h // 2, w // 2
            c_in = c_out
            channels.append(c_out)
            if stage >= 1 and min(h, w) <= 4:
                break
        if h * w <= 16:
            x = b.node("Flatten", [x], "features", axis=1)
            width = c_in * h * w
        else:
            x = b.node("Flatten", [b.node("GlobalAveragePool", [x], "gap")], "features", axis=1)
            width = c_in
        notes.append(
            f"generated CNN student: channels {channels} (width_multiplier {width_multiplier})"
        )

    out_types = [elem_type(o) for o in teacher.graph.output]
    _heads(b, x, width, specs, out_types)
    graph = helper.make_graph(
        b.nodes,
        f"{teacher.graph.name or 'teacher'}_student",
        [_copy(v) for v in inputs],
        [_copy(v) for v in teacher.graph.output],
        b.inits,
    )
    opset = max(opset_of(teacher), MIN_STUDENT_OPSET)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="edgefleet-distill",
    )
    # The teacher's IR version is one this onnxruntime loads; the newest onnx may write a newer one.
    model.ir_version = (
        max(teacher.ir_version, 3) if opset == opset_of(teacher) else model.ir_version
    )
    onnx.checker.check_model(model)
    return Student(model=model, source=f"generated-{architecture}", frozen=b.frozen, notes=notes)


def _copy(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    return out


def _dims_compatible(a: list, b: list) -> bool:
    if not a or not b:
        return True
    if len(a) != len(b):
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a, b, strict=True)
    )


def adapt_uploaded_student(teacher: onnx.ModelProto, path: str | Path) -> Student:
    """Load an operator's student and give it the teacher's signature, or say why it can't."""
    path = Path(path)
    if not path.is_file():
        raise RecipeNotApplicable(f"distill: student_path {str(path)!r} is not a file")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a broken file
        raise RecipeNotApplicable(
            f"distill: the uploaded student is not a valid ONNX model: {exc}"
        ) from exc

    t_in, s_in = graph_inputs(teacher), graph_inputs(model)
    t_out, s_out = list(teacher.graph.output), list(model.graph.output)
    if len(t_in) != len(s_in) or len(t_out) != len(s_out):
        raise RecipeNotApplicable(
            f"distill: the uploaded student has {len(s_in)} input(s) and {len(s_out)} output(s); "
            f"the teacher has {len(t_in)} and {len(t_out)}, so it cannot replace it"
        )
    renames: dict[str, str] = {}
    for kind, pairs in (
        ("input", zip(t_in, s_in, strict=True)),
        ("output", zip(t_out, s_out, strict=True)),
    ):
        for t, s in pairs:
            if elem_type(t) != elem_type(s) or not _dims_compatible(
                declared_dims(t), declared_dims(s)
            ):
                raise RecipeNotApplicable(
                    f"distill: student {kind} {s.name!r} "
                    f"({TensorProto.DataType.Name(elem_type(s))} {declared_dims(s)}) does not match "
                    f"the teacher's {t.name!r} ({TensorProto.DataType.Name(elem_type(t))} "
                    f"{declared_dims(t)})"
                )
            if t.name != s.name:
                renames[s.name] = t.name

    notes = []
    if renames:
        taken = {n for node in model.graph.node for n in (*node.input, *node.output)}
        taken |= {i.name for i in model.graph.initializer}
        clash = (set(renames.values()) & taken) - set(renames)
        if clash:
            raise RecipeNotApplicable(
                f"distill: cannot rename the student's inputs/outputs to the teacher's: the "
                f"student already uses the name(s) {sorted(clash)} inside its graph"
            )
        for node in model.graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        notes.append(f"student inputs/outputs renamed to the teacher's: {renames}")
    # Declare the teacher's signature verbatim (names, types, symbolic dims), inputs first.
    inits = {i.name for i in model.graph.initializer}
    kept_inputs = [v for v in model.graph.input if v.name in inits]
    del model.graph.input[:]
    model.graph.input.extend([_copy(v) for v in t_in] + kept_inputs)
    del model.graph.output[:]
    model.graph.output.extend([_copy(v) for v in t_out])
    onnx.checker.check_model(model)
    return Student(model=model, source="uploaded", notes=notes)


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose named initializers hold ``weights`` (in their own dtype)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.name in weights:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            out.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(weights[init.name].astype(dtype), init.name)
            )
    return out
