"""Run an ONNX graph as a PyTorch module whose float weights are trainable parameters.

This is deliberately an interpreter, not a converter: the ONNX file stays the source of truth,
the trainer only changes initializer values, and ``weights()`` hands them back to be written
into the very same graph. Nothing is re-exported, so the student keeps its names, opset and
dynamic dimensions, and no exporter version can change what the operator uploaded.

The op table covers what small students are made of (dense, convolutional, normalisation,
activation and shape ops). ``unsupported_ops`` lists anything else before training starts, and
the recipe compares this module with onnxruntime on real inputs before it trains, so a semantic
mismatch is caught in a second, not after an hour of training.

Imports torch at module level: import it only after checking that torch is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from compression.engine.distill.students import FLOAT_TYPES, opset_of

# Where a float initializer is a learned weight; any other use (BatchNorm statistics, Clip
# bounds, Pad values, scalar constants such as epsilons) freezes it.
WEIGHT_POSITIONS: dict[str, tuple[int, ...]] = {
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "Conv": (1, 2),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "PRelu": (1,),
    "Add": (0, 1),
    "Sub": (0, 1),
    "Mul": (0, 1),
}
_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float32,  # trained in float32; written back in the file's dtype
    TensorProto.DOUBLE: torch.float32,
    TensorProto.BFLOAT16: torch.float32,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}

Op = Callable[[list, dict, int], list]
OPS: dict[str, Op] = {}


def op(*names: str):
    def register(fn: Op) -> Op:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch copy of ``array``, floats as float32 (np.ascontiguousarray would make 0-d 1-d)."""
    array = np.asarray(array)
    return torch.from_numpy(np.array(array, dtype=np.float32 if array.dtype.kind == "f" else None))


# --- arithmetic and activations ---------------------------------------------------------------
for _name, _fn in {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
}.items():
    OPS[_name] = lambda x, a, v, fn=_fn: [fn(x[0], x[1])]
for _name, _fn in {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Softplus": F.softplus,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Not": torch.logical_not,
}.items():
    OPS[_name] = lambda x, a, v, fn=_fn: [fn(x[0])]


@op("Div")
def _div(x, a, v):
    if x[0].is_floating_point():
        return [x[0] / x[1]]
    return [torch.div(x[0], x[1], rounding_mode="trunc")]


@op("Identity", "Dropout")
def _identity(x, a, v):
    # Dropout runs in inference mode: the variant is exported for inference, so train it so.
    return [x[0], torch.ones_like(x[0], dtype=torch.bool)]


@op("LeakyRelu")
def _leaky(x, a, v):
    return [F.leaky_relu(x[0], a.get("alpha", 0.01))]


@op("Elu")
def _elu(x, a, v):
    return [F.elu(x[0], a.get("alpha", 1.0))]


@op("HardSigmoid")
def _hard_sigmoid(x, a, v):
    return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)]


@op("HardSwish")
def _hard_swish(x, a, v):
    return [F.hardswish(x[0])]


@op("Gelu")
def _gelu(x, a, v):
    return [F.gelu(x[0], approximate=a.get("approximate", "none"))]


@op("PRelu")
def _prelu(x, a, v):
    return [torch.where(x[0] >= 0, x[0], x[0] * x[1])]


@op("Clip")
def _clip(x, a, v):
    if v < 11:
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = x[1] if len(x) > 1 and x[1] is not None else None
        hi = x[2] if len(x) > 2 and x[2] is not None else None
    out = x[0]
    if lo is not None:
        out = torch.maximum(out, torch.as_tensor(lo, dtype=out.dtype))
    if hi is not None:
        out = torch.minimum(out, torch.as_tensor(hi, dtype=out.dtype))
    return [out]


def _make_variadic(fn, mean=False):
    def run(x, a, v):
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return [out / len(x) if mean else out]

    return run


OPS["Sum"] = _make_variadic(torch.add)
OPS["Max"] = _make_variadic(torch.maximum)
OPS["Min"] = _make_variadic(torch.minimum)
OPS["Mean"] = _make_variadic(torch.add, mean=True)


@op("Where")
def _where(x, a, v):
    return [torch.where(x[0], x[1], x[2])]


def _make_softmax(log: bool):
    fn = torch.log_softmax if log else torch.softmax

    def run(x, a, v):
        t = x[0]
        axis = _axis(a.get("axis", -1 if v >= 13 else 1), t.dim())
        if v >= 13:
            return [fn(t, dim=axis)]
        # Before opset 13 the input is coerced to 2-D at ``axis`` and normalised over the rest.
        shape = t.shape
        flat = t.reshape(math.prod(shape[:axis]), -1)
        return [fn(flat, dim=1).reshape(shape)]

    return run


OPS["Softmax"] = _make_softmax(False)
OPS["LogSoftmax"] = _make_softmax(True)


# --- dense and convolutional layers ------------------------------------------------------------
@op("Gemm")
def _gemm(x, a, v):
    A, B = x[0], x[1]
    if a.get("transA", 0):
        A = A.t()
    if a.get("transB", 0):
        B = B.t()
    y = a.get("alpha", 1.0) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return [y]


@op("MatMul")
def _matmul(x, a, v):
    return [torch.matmul(x[0], x[1])]


def _spatial_pads(
    a: dict, t: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]
):
    """ONNX pads as [begin..., end...], resolving auto_pad against the input's spatial shape."""
    n = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            size = t.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return list(a.get("pads", [0] * (2 * n)))


def _pad_input(t: torch.Tensor, pads: list[int], value: float = 0.0):
    """Apply ONNX-order spatial pads with F.pad; return the tensor and symmetric leftovers."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return t, begin
    torch_pads: list[int] = []
    for i in reversed(range(n)):
        torch_pads += [begin[i], end[i]]
    return F.pad(t, torch_pads, value=value), [0] * n


@op("Conv")
def _conv(x, a, v):
    t, w = x[0], x[1]
    bias = x[2] if len(x) > 2 and x[2] is not None else None
    n = w.dim() - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = _spatial_pads(a, t, kernel, strides, dilations)
    t, padding = _pad_input(t, pads)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return [conv(t, w, bias, strides, padding, dilations, a.get("group", 1))]


def _make_pool(kind: str):
    def run(x, a, v):
        t = x[0]
        kernel = list(a["kernel_shape"])
        n = len(kernel)
        strides = list(a.get("strides", [1] * n))
        dilations = list(a.get("dilations", [1] * n))
        pads = _spatial_pads(a, t, kernel, strides, dilations)
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "max":
            t, padding = _pad_input(t, pads, value=float("-inf"))
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return [pool(t, kernel, strides, padding, dilations, ceil_mode=ceil)]
        include = bool(a.get("count_include_pad", 0))
        if pads[:n] != pads[n:]:
            if not include:
                raise NotImplementedError(
                    "AveragePool with asymmetric pads and count_include_pad=0"
                )
            t, padding = _pad_input(t, pads)
        else:
            padding = pads[:n]
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        return [pool(t, kernel, strides, padding, ceil_mode=ceil, count_include_pad=include)]

    return run


OPS["MaxPool"] = _make_pool("max")
OPS["AveragePool"] = _make_pool("avg")


@op("GlobalAveragePool")
def _gap(x, a, v):
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(x, a, v):
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("BatchNormalization")
def _batchnorm(x, a, v):
    # Inference form with the file's running statistics; scale and bias train.
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))]


@op("InstanceNormalization")
def _instancenorm(x, a, v):
    return [F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))]


@op("LayerNormalization")
def _layernorm(x, a, v):
    t = x[0]
    axis = _axis(a.get("axis", -1), t.dim())
    bias = x[2] if len(x) > 2 and x[2] is not None else None
    return [F.layer_norm(t, t.shape[axis:], x[1], bias, a.get("epsilon", 1e-5))]


# --- shape and layout ---------------------------------------------------------------------------
@op("Flatten")
def _flatten(x, a, v):
    t = x[0]
    axis = _axis(a.get("axis", 1), t.dim())
    return [t.reshape(math.prod(t.shape[:axis]), -1)]


@op("Reshape")
def _reshape(x, a, v):
    t = x[0]
    shape = _ints(x[1]) if v >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [t.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [t.reshape(shape)]


@op("Transpose")
def _transpose(x, a, v):
    perm = a.get("perm", list(reversed(range(x[0].dim()))))
    return [x[0].permute(*perm)]


@op("Squeeze")
def _squeeze(x, a, v):
    axes = a.get("axes") if v < 13 else _ints(x[1] if len(x) > 1 else None)
    t = x[0]
    if axes is None:
        return [t.squeeze()]
    for ax in sorted((_axis(i, t.dim()) for i in axes), reverse=True):
        t = t.squeeze(ax)
    return [t]


@op("Unsqueeze")
def _unsqueeze(x, a, v):
    axes = a.get("axes") if v < 13 else _ints(x[1])
    t = x[0]
    rank = t.dim() + len(axes)
    for ax in sorted(_axis(i, rank) for i in axes):
        t = t.unsqueeze(ax)
    return [t]


@op("Concat")
def _concat(x, a, v):
    return [torch.cat([t for t in x if t is not None], dim=a["axis"])]


@op("Shape")
def _shape(x, a, v):
    dims = list(x[0].shape)
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@op("Gather")
def _gather(x, a, v):
    t, idx = x[0], x[1].long()
    axis = _axis(a.get("axis", 0), t.dim())
    idx = torch.where(idx < 0, idx + t.shape[axis], idx)
    out = t.index_select(axis, idx.reshape(-1))
    return [out.reshape((*t.shape[:axis], *idx.shape, *t.shape[axis + 1 :]))]


@op("Slice")
def _slice(x, a, v):
    t = x[0]
    if v < 10:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = a.get("axes"), None
    else:
        starts, ends = _ints(x[1]), _ints(x[2])
        axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index = [slice(None)] * t.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        if st < 0:
            raise NotImplementedError("Slice with negative steps")
        size = t.shape[_axis(ax, t.dim())]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[_axis(ax, t.dim())] = slice(s, e, st)
    return [t[tuple(index)]]


@op("Expand")
def _expand(x, a, v):
    shape = _ints(x[1])
    t = x[0]
    return [t * torch.ones(shape, dtype=t.dtype)]


@op("Pad")
def _pad(x, a, v):
    t = x[0]
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if v < 11:
        pads, value = list(a["pads"]), a.get("value", 0.0)
    else:
        pads = _ints(x[1])
        value = float(x[2].reshape(-1)[0]) if len(x) > 2 and x[2] is not None else 0.0
    if len(x) > 3 and x[3] is not None:
        raise NotImplementedError("Pad with axes")
    n = t.dim()
    torch_pads: list[int] = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    return [F.pad(t, torch_pads, mode=mode, value=value if mode == "constant" else None)]


def _reduce(fn_name: str, axes_input_from: int):
    def run(x, a, v):
        t = x[0]
        if v >= axes_input_from:
            axes = _ints(x[1]) if len(x) > 1 and x[1] is not None else None
        else:
            axes = a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [t]
            axes = list(range(t.dim()))
        dims = tuple(_axis(i, t.dim()) for i in axes)
        if fn_name == "mean":
            return [t.mean(dim=dims, keepdim=keep)]
        if fn_name == "sum":
            return [t.sum(dim=dims, keepdim=keep)]
        return [t.amax(dim=dims, keepdim=keep)]

    return run


OPS["ReduceMean"] = _reduce("mean", 18)
OPS["ReduceSum"] = _reduce("sum", 13)
OPS["ReduceMax"] = _reduce("max", 18)


@op("Cast")
def _cast(x, a, v):
    return [x[0].to(_TORCH_DTYPES[a["to"]])]


@op("ArgMax")
def _argmax(x, a, v):
    return [torch.argmax(x[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))]


@op("ConstantOfShape")
def _constant_of_shape(x, a, v):
    value = a.get("value")
    fill = to_tensor(numpy_helper.to_array(value)) if value is not None else torch.zeros(1)
    return [fill.reshape(-1)[0] * torch.ones(_ints(x[0]), dtype=fill.dtype)]


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The array a Constant node holds, whichever attribute carries it."""
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if attr.name == "value":
            return numpy_helper.to_array(value)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(value, dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(value, dtype=np.int64)
    raise NotImplementedError(
        f"Constant node {node.name!r} with attribute {node.attribute[0].name}"
    )


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """Op types (and custom domains) the trainer cannot run, sorted; empty when all is well."""
    bad = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}.{node.op_type}")
        elif node.op_type != "Constant" and node.op_type not in OPS:
            bad.add(node.op_type)
        if any(
            attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for attr in node.attribute
        ):
            bad.add(f"{node.op_type} (subgraph)")
    return sorted(bad)


def trainable_names(model: onnx.ModelProto, frozen: set[str]) -> set[str]:
    """Float initializers used only at weight positions (and not tiny scalar constants)."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    names = set()
    for init in model.graph.initializer:
        if init.data_type not in FLOAT_TYPES or init.name in frozen or init.name not in uses:
            continue
        elementwise_scalar = math.prod(init.dims) <= 1
        if all(
            i in WEIGHT_POSITIONS.get(op_type, ())
            and not (elementwise_scalar and op_type in ("Add", "Sub", "Mul"))
            for op_type, i in uses[init.name]
        ):
            names.add(init.name)
    return names


class OnnxModule(torch.nn.Module):
    """An ONNX graph executed node by node, its trainable initializers as ``nn.Parameter``s."""

    def __init__(self, model: onnx.ModelProto, frozen: set[str] | None = None):
        super().__init__()
        self.opset = opset_of(model)
        self.nodes = list(model.graph.node)
        self.input_names = [v.name for v in model.graph.input]
        self.output_names = [v.name for v in model.graph.output]
        trainable = trainable_names(model, frozen or set())
        self.param_names: list[str] = []
        self.weights_list = torch.nn.ParameterList()
        self.constants: dict[str, torch.Tensor] = {}
        for init in model.graph.initializer:
            tensor = to_tensor(numpy_helper.to_array(init))
            if init.name in trainable:
                self.param_names.append(init.name)
                self.weights_list.append(torch.nn.Parameter(tensor))
            else:
                self.constants[init.name] = tensor
        for node in self.nodes:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = to_tensor(constant_value(node))
        self.attrs = [{attr.name: _attr(attr) for attr in node.attribute} for node in self.nodes]

    def forward(
        self, feeds: dict[str, torch.Tensor], outputs: list[str] | None = None
    ) -> list[torch.Tensor]:
        values: dict[str, torch.Tensor | None] = {"": None, **self.constants}
        values.update(zip(self.param_names, self.weights_list, strict=True))
        values.update(feeds)
        for node, attrs in zip(self.nodes, self.attrs, strict=True):
            if node.op_type == "Constant":
                continue
            results = OPS[node.op_type]([values[n] for n in node.input], attrs, self.opset)
            for name, result in zip(node.output, results, strict=False):
                if name:
                    values[name] = result
        return [values[n] for n in (outputs or self.output_names)]

    def weights(self) -> dict[str, np.ndarray]:
        """The trainable initializers' current values, by initializer name."""
        return {
            name: p.detach().cpu().numpy().copy()
            for name, p in zip(self.param_names, self.weights_list, strict=True)
        }

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.weights_list)


def _attr(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    return value
