"""Structured pruning: remove whole Conv output channels and Gemm/MatMul neurons.

Unlike magnitude pruning this makes tensors smaller, so the variant is smaller on disk, in
memory, and faster on any runtime. It is only correct where the graph lets every reader of the
pruned layer follow the change, so the recipe traces each candidate layer's output forward:

    layer --(elementwise ops, BatchNormalization, pooling, Flatten/Reshape to 2-D)--> consumers

Every tensor on that path carries the layer's channel axis. The path may only end in Conv,
ConvTranspose, Gemm or MatMul nodes with constant weights, whose input channels (or feature
blocks, after a Flatten) are then sliced to match. Constants met on the way (bias adds, BN
parameters, per-channel scales) are sliced too. A layer is refused when any tensor on the path
is a graph output, is read inside a subgraph, or meets a non-constant tensor from elsewhere
(residual Add, Concat, attention reshapes, ...): removing channels there would change what
another branch sees.

Channels are ranked by the L1 norm of their weights and the ``ratio`` smallest are removed, in
every layer that qualifies. Only the main graph is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from compression.engine.data import sample_feed
from compression.engine.recipes._common import bool_param
from compression.engine.recipes.prune_magnitude import compressed_sizes, consumers_by_name

NAME = "prune-structured"
SUMMARY = "Remove the weakest Conv channels / Gemm-MatMul neurons; smaller and faster everywhere."
DEFAULTS: dict[str, Any] = {"ratio": 0.25, "min_channels": 4, "refit": True}
REFIT_MAX_SAMPLES = 512
REFIT_MAX_ROWS = 50_000
REFIT_RIDGE = 1e-3
"""Ridge strength relative to the mean feature energy: small enough to fit, large enough to
keep the solve stable when calibration rows are few or features are collinear."""

UNARY_OPS = frozenset(
    {
        "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid",
        "HardSwish", "Softplus", "Softsign", "Erf", "Gelu", "Mish", "ThresholdedRelu",
        "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
        "Round", "Sin", "Cos", "Cast", "Clip", "Dropout",
    }
)  # fmt: skip
BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"})
# Per-channel ops over axis 1 of an N x C x ... tensor.
POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
)
NORM_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}
RESHAPE_OPS = frozenset({"Flatten", "Reshape"})


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fill in defaults and check ranges; raise ``EngineError`` with a plain message otherwise."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise EngineError(
            f"{NAME}: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    merged = {**DEFAULTS, **params}
    ratio = float(merged["ratio"])
    if not 0.0 < ratio < 1.0:
        raise EngineError(f"{NAME}: ratio must be between 0 and 1 (exclusive), got {ratio}")
    min_channels = int(merged["min_channels"])
    if min_channels < 1:
        raise EngineError(f"{NAME}: min_channels must be at least 1, got {min_channels}")
    return {
        "ratio": ratio,
        "min_channels": min_channels,
        "refit": bool_param(NAME, "refit", merged["refit"]),
    }


class _Refused(Exception):
    """This layer cannot be pruned; the message says why."""


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}->{node.output[0]}"


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class _Constants:
    """The main graph's constants (initializers and Constant nodes), editable per node input.

    Replacing a node's constant input rewrites the tensor in place when that node is its only
    reader, and otherwise gives the node a private copy, so shared tensors are never corrupted.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.constant_nodes = {
            node.output[0]: node
            for node in self.graph.node
            if node.op_type == "Constant" and any(a.name == "value" for a in node.attribute)
        }
        self.cache: dict[str, np.ndarray] = {}
        self.refresh_uses()
        self.serial = 0

    def refresh_uses(self) -> None:
        self.consumers = consumers_by_name(self.model)
        self.uses = {name: len(readers) for name, readers in self.consumers.items()}
        for output in self.graph.output:
            self.uses[output.name] = self.uses.get(output.name, 0) + 1

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def get(self, name: str) -> np.ndarray | None:
        if name not in self.cache:
            if name in self.initializers:
                self.cache[name] = numpy_helper.to_array(self.initializers[name])
            elif name in self.constant_nodes:
                node = self.constant_nodes[name]
                value = next(a for a in node.attribute if a.name == "value")
                self.cache[name] = numpy_helper.to_array(value.t)
            else:
                return None
        return self.cache[name]

    def replace(self, node: onnx.NodeProto, index: int, array: np.ndarray) -> None:
        name = node.input[index]
        if self.uses.get(name, 0) <= 1 and name in self.initializers:
            self.initializers[name].CopyFrom(numpy_helper.from_array(array, name))
            self.cache[name] = array
            return
        if self.uses.get(name, 0) <= 1 and name in self.constant_nodes:
            value = next(a for a in self.constant_nodes[name].attribute if a.name == "value")
            value.t.CopyFrom(numpy_helper.from_array(array, name))
            self.cache[name] = array
            return
        self.serial += 1
        new_name = f"{name}__pruned{self.serial}"
        init = numpy_helper.from_array(array, new_name)
        self.graph.initializer.append(init)
        self.initializers[new_name] = self.graph.initializer[-1]
        self.cache[new_name] = array
        node.input[index] = new_name
        self.uses[name] -= 1
        self.uses[new_name] = 1

    def drop_unused(self) -> None:
        """Remove constants nothing reads any more (the originals of private copies)."""
        self.refresh_uses()
        keep = [i for i in self.graph.initializer if self.uses.get(i.name, 0) > 0]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        nodes = [
            n
            for n in self.graph.node
            if not (n.op_type == "Constant" and n.output and self.uses.get(n.output[0], 0) == 0)
        ]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        # Old models (IR < 4) also list initializers as graph inputs: keep those in step.
        inits = {i.name: i for i in self.graph.initializer}
        inputs = []
        for value in self.graph.input:
            if value.name in inits:
                dims = value.type.tensor_type.shape.dim
                del dims[:]
                for size in inits[value.name].dims:
                    dims.add().dim_value = size
            elif value.name in self.initializers:
                continue  # an initializer we removed
            inputs.append(value)
        del self.graph.input[:]
        self.graph.input.extend(inputs)
        if self.model.ir_version < 4:
            listed = {v.name for v in self.graph.input}
            for init in self.graph.initializer:
                if init.name not in listed:
                    self.graph.input.append(
                        onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                    )


@dataclass
class _State:
    """How a tensor on the traced path carries the pruned channels.

    ``axis`` counts from the end (-1 is the last axis); ``rank`` is known for Conv/Gemm paths.
    ``flat`` is True after a Flatten/Reshape of an N x C x H x W tensor to N x (C*H*W): each
    channel then spans ``_Plan.flat_block`` consecutive features.
    """

    axis: int
    rank: int | None
    flat: bool = False


@dataclass
class _Plan:
    """Everything to slice when one layer loses channels."""

    producer: onnx.NodeProto
    channels: int
    weight_index: int
    weight_axis: int
    bias_index: int | None
    region: dict[str, _State] = field(default_factory=dict)
    flat_block: int | None = None
    """Features per channel after a Flatten (H*W); learnt from the first reader that knows."""
    # (node, input index, axis, flat) for per-channel constants on the path.
    constants: list[tuple[onnx.NodeProto, int, int, bool]] = field(default_factory=list)
    # Reshapes whose target spells out C*H*W, to be rewritten.
    reshapes: list[tuple[onnx.NodeProto, np.ndarray]] = field(default_factory=list)
    # (consumer node, weight input index, axis to slice, flat)
    consumers: list[tuple[onnx.NodeProto, int, int, bool]] = field(default_factory=list)

    def matches(self, state: _State, features: int) -> bool:
        """Whether ``features`` values along the channel axis are exactly the channels."""
        if not state.flat:
            return features == self.channels
        if self.flat_block is None:
            if features % self.channels:
                return False
            self.flat_block = features // self.channels
        return features == self.channels * self.flat_block


def _producer_layout(
    node: onnx.NodeProto, consts: _Constants
) -> tuple[int, int, int | None, _State]:
    """(weight input, output-channel axis of the weight, bias input, output state) or refuse."""
    if node.op_type == "Conv":
        weight = consts.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or weight.ndim < 3:
            raise _Refused("its weight is not a constant")
        if _attr(node, "group", 1) != 1:
            raise _Refused("grouped/depthwise convolution")
        bias = 2 if len(node.input) > 2 and node.input[2] else None
        if bias is not None and consts.get(node.input[2]) is None:
            raise _Refused("its bias is not a constant")
        return 1, 0, bias, _State(axis=1 - weight.ndim, rank=weight.ndim)
    if node.op_type == "Gemm":
        if consts.is_constant(node.input[0]):
            raise _Refused("its input A is constant")
        weight = consts.get(node.input[1])
        if weight is None or weight.ndim != 2:
            raise _Refused("its weight is not a constant matrix")
        if _attr(node, "transA", 0):
            raise _Refused("transA=1")
        bias = 2 if len(node.input) > 2 and node.input[2] else None
        if bias is not None and consts.get(node.input[2]) is None:
            raise _Refused("its bias is not a constant")
        axis = 0 if _attr(node, "transB", 0) else 1
        return 1, axis, bias, _State(axis=-1, rank=2)
    if node.op_type == "MatMul":
        weight = consts.get(node.input[1])
        if weight is None or weight.ndim != 2 or consts.is_constant(node.input[0]):
            raise _Refused("it is not an activation times a constant 2-D weight")
        return 1, 1, None, _State(axis=-1, rank=None)
    raise _Refused(f"{node.op_type} is not a prunable layer")


def _consumer(
    node: onnx.NodeProto, state: _State, plan: _Plan, consts: _Constants
) -> tuple[onnx.NodeProto, int, int, bool]:
    """The weight slice a Conv/Gemm/MatMul reader needs, or refuse."""
    label, op = _label(node), node.op_type
    weight = consts.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        raise _Refused(f"reader {label} has a non-constant weight")
    if op in ("Conv", "ConvTranspose"):
        if _attr(node, "group", 1) != 1:
            raise _Refused(f"reader {label} is a grouped/depthwise convolution")
        if state.flat or state.rank != weight.ndim or state.axis != 1 - weight.ndim:
            raise _Refused(f"reader {label} does not read the channel axis")
        axis = 1 if op == "Conv" else 0
    else:
        if weight.ndim != 2:
            raise _Refused(f"reader {label} has a {weight.ndim}-D weight")
        if op == "Gemm" and _attr(node, "transA", 0):
            raise _Refused(f"reader {label} uses transA=1")
        if state.axis != -1:
            raise _Refused(f"reader {label} does not read the channel axis")
        axis = 1 if (op == "Gemm" and _attr(node, "transB", 0)) else 0
    if not plan.matches(state, weight.shape[axis]):
        raise _Refused(
            f"reader {label} takes {weight.shape[axis]} input features for {plan.channels} channels"
        )
    return node, 1, axis, state.flat


def _trace(producer: onnx.NodeProto, consts: _Constants, main_nodes: set[int]) -> _Plan:
    """Follow the producer's output to its readers; raise ``_Refused`` if it cannot be pruned."""
    weight_index, weight_axis, bias_index, start = _producer_layout(producer, consts)
    channels = consts.get(producer.input[weight_index]).shape[weight_axis]
    plan = _Plan(producer, channels, weight_index, weight_axis, bias_index)
    graph_outputs = {o.name for o in consts.graph.output}
    plan.region[producer.output[0]] = start
    pending = [producer.output[0]]
    path_nodes: dict[int, onnx.NodeProto] = {}

    while pending:
        tensor = pending.pop()
        state = plan.region[tensor]
        if tensor in graph_outputs:
            raise _Refused(f"its output reaches graph output {tensor!r}")
        readers = consts.consumers.get(tensor, [])
        if not readers:
            raise _Refused(f"{tensor!r} has no reader")
        for node, index in readers:
            if id(node) not in main_nodes:
                raise _Refused(f"{tensor!r} is read inside a subgraph ({node.op_type})")
            if node.domain not in ("", "ai.onnx"):
                raise _Refused(f"{tensor!r} feeds custom op {node.domain}.{node.op_type}")
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and index == 0:
                plan.consumers.append(_consumer(node, state, plan, consts))
                continue
            path_nodes[id(node)] = node
            for output, new_state in _follow(node, index, tensor, state, plan, consts).items():
                if output in plan.region:
                    if plan.region[output] != new_state:
                        raise _Refused(f"{output!r} would carry the channels on two axes")
                    continue
                plan.region[output] = new_state
                pending.append(output)

    # Every node on the path may read only path tensors and constants.
    for node in path_nodes.values():
        state = next(plan.region[name] for name in node.input if name in plan.region)
        if node.op_type in NORM_PARAMS:
            for index in NORM_PARAMS[node.op_type]:
                if index < len(node.input) and node.input[index]:
                    plan.constants.append((node, index, 0, False))
            continue
        for index, name in enumerate(node.input):
            if not name or name in plan.region or (node.op_type == "Reshape" and index == 1):
                continue
            if not consts.is_constant(name):
                what = "a residual Add or another branch" if node.op_type in BINARY_OPS else "it"
                raise _Refused(
                    f"{_label(node)} ({node.op_type}) combines its channels with {name!r} "
                    f"({what}); removing channels would change that tensor's meaning too"
                )
            shape = consts.get(name).shape
            if len(shape) < -state.axis or shape[state.axis] == 1:
                continue  # broadcast over the channels: nothing to slice
            if not plan.matches(state, shape[state.axis]):
                raise _Refused(f"constant {name!r} of {_label(node)} has shape {list(shape)}")
            plan.constants.append((node, index, len(shape) + state.axis, state.flat))
    if not plan.consumers:
        raise _Refused("its output reaches no Conv/Gemm/MatMul that could follow the change")
    if plan.flat_block is None and any(s.flat for s in plan.region.values()):
        raise _Refused("cannot tell how many features each channel spans after the reshape")
    return plan


def _follow(
    node: onnx.NodeProto,
    index: int,
    tensor: str,
    state: _State,
    plan: _Plan,
    consts: _Constants,
) -> dict[str, _State]:
    """The states of ``node``'s outputs when its input ``index`` carries the channels."""
    op, label = node.op_type, _label(node)
    same = {node.output[0]: _State(state.axis, state.rank, state.flat)}
    if any(name and consts.uses.get(name, 0) for name in node.output[1:]):
        raise _Refused(f"{label} ({op}) uses its extra outputs")
    if op in UNARY_OPS:
        if index != 0:
            raise _Refused(f"{tensor!r} is a parameter of {label} ({op})")
        return same
    if op in BINARY_OPS:
        if op == "PRelu" and index != 0:
            raise _Refused(f"{tensor!r} is the slope of {label}")
        return same
    channel_first = state.rank is not None and state.axis == 1 - state.rank and not state.flat
    if op in NORM_PARAMS or op in POOL_OPS:
        if index != 0 or not channel_first:
            raise _Refused(f"{label} ({op}) does not work per channel here")
        return same
    if op == "Flatten":
        if _attr(node, "axis", 1) != 1 or not (channel_first or state.rank == 2):
            raise _Refused(f"{label} flattens across the channel axis")
        return {node.output[0]: _State(axis=-1, rank=2, flat=state.flat or state.rank != 2)}
    if op == "Reshape" and index == 0:
        target = consts.get(node.input[1])
        if target is None or target.ndim != 1 or len(target) != 2 or not channel_first:
            raise _Refused(f"{label} reshapes the channels in a way that cannot be followed")
        flat = state.rank != 2
        if target[1] == -1 and target[0] >= 0:
            return {node.output[0]: _State(axis=-1, rank=2, flat=flat)}
        if target[1] > 0 and target[0] in (0, -1):
            result = _State(axis=-1, rank=2, flat=flat)
            if not plan.matches(result, int(target[1])):
                raise _Refused(f"{label} reshapes to {target.tolist()}, which mixes channels")
            plan.reshapes.append((node, target))
            return {node.output[0]: result}
        raise _Refused(f"{label} reshapes to {target.tolist()}, which mixes channels")
    raise _Refused(f"its output feeds {label} ({op}), which is not a simple per-channel op")


def _apply_plan(plan: _Plan, ratio: float, min_channels: int, consts: _Constants) -> np.ndarray:
    """Slice every tensor in the plan; return the indices of the channels kept."""
    weight = consts.get(plan.producer.input[plan.weight_index])
    channels = plan.channels
    remove = min(int(round(ratio * channels)), channels - min_channels)
    if remove <= 0:
        raise _Refused(f"only {channels} channels (min_channels={min_channels})")
    other_axes = tuple(a for a in range(weight.ndim) if a != plan.weight_axis)
    importance = np.abs(weight.astype(np.float64)).sum(axis=other_axes)
    keep = np.sort(np.argsort(importance, kind="stable")[remove:])
    block = plan.flat_block or 1
    features = (keep[:, None] * block + np.arange(block)[None, :]).ravel()

    consts.replace(plan.producer, plan.weight_index, np.take(weight, keep, axis=plan.weight_axis))
    if plan.bias_index is not None:
        bias = consts.get(plan.producer.input[plan.bias_index])
        if bias.ndim >= 1 and bias.shape[-1] == channels:
            consts.replace(plan.producer, plan.bias_index, np.take(bias, keep, axis=-1))
    for node, index, axis, flat in plan.constants + plan.consumers:
        value = consts.get(node.input[index])
        consts.replace(node, index, np.take(value, features if flat else keep, axis=axis))
    for node, target in plan.reshapes:
        new_target = target.copy()
        new_target[1] = len(features)
        consts.replace(node, 1, new_target)
    return keep


def _activations(
    model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``feeds`` and return the named intermediate tensors, rows stacked."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    # A half-pruned model still carries the shape annotations of the unpruned one; onnxruntime
    # refuses annotations that contradict the weights ("Dimension mismatch in unification
    # between 192 and 256"), so the probe runs without them.
    del probe.graph.value_info[:]
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    count = len(next(iter(feeds.values())))
    stacked: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i in range(count):
        for name, out in zip(names, session.run(names, sample_feed(feeds, i)), strict=True):
            stacked[name].append(out.reshape(-1, out.shape[-1]))
    return {name: np.concatenate(parts) for name, parts in stacked.items()}


def _refit(
    targets: list[onnx.NodeProto],
    kept: dict[int, np.ndarray],
    original_bytes: bytes,
    consts: _Constants,
    ctx: RecipeContext,
) -> list[str]:
    """Refit each Gemm/MatMul that lost input channels, by ridge least squares on calibration
    data, so its output matches the original model's (the kept columns of it, if that layer
    was pruned too). Later layers are fitted on the inputs the earlier refits produce."""
    feeds = {k: v[:REFIT_MAX_SAMPLES] for k, v in ctx.calibration.items()}
    original = onnx.load_from_string(original_bytes)
    wanted = [node.output[0] for node in targets]
    try:
        expected = _activations(original, wanted, feeds)
    except Exception as error:  # a model we cannot probe is still a valid pruned model
        return [f"refit skipped: could not collect activations ({str(error)[:200]})"]
    rng = np.random.default_rng(0)
    refitted, skipped = [], []
    for node in targets:
        label = _label(node)
        if ctx.cancelled():
            raise Cancelled(f"{NAME} cancelled")
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        if node.op_type == "Gemm" and (alpha != 1.0 or beta != 1.0):
            skipped.append(f"{label} (alpha/beta)")
            continue
        inputs = _activations(consts.model, [node.input[0]], feeds)[node.input[0]]
        target = expected[node.output[0]]
        if id(node) in kept:
            target = target[:, kept[id(node)]]
        if len(inputs) > REFIT_MAX_ROWS:
            rows = rng.choice(len(inputs), REFIT_MAX_ROWS, replace=False)
            inputs, target = inputs[rows], target[rows]
        with_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
        x = inputs.astype(np.float64)
        if with_bias:
            x = np.hstack([x, np.ones((len(x), 1))])
        gram = x.T @ x
        features = inputs.shape[1]
        ridge = REFIT_RIDGE * np.trace(gram[:features, :features]) / max(features, 1)
        gram[np.arange(features), np.arange(features)] += ridge
        try:
            solution = np.linalg.solve(gram, x.T @ target.astype(np.float64))
        except np.linalg.LinAlgError:
            skipped.append(f"{label} (singular)")
            continue
        if not np.all(np.isfinite(solution)):
            skipped.append(f"{label} (not finite)")
            continue
        weight = consts.get(node.input[1])
        new_weight = solution[:features]
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            new_weight = new_weight.T
        consts.replace(node, 1, np.ascontiguousarray(new_weight.astype(weight.dtype)))
        if with_bias:
            consts.replace(node, 2, solution[features].astype(weight.dtype))
        refitted.append(label)
        consts.refresh_uses()
    notes = []
    if refitted:
        notes.append(
            f"refitted {len(refitted)} Gemm/MatMul readers on {len(next(iter(feeds.values())))} "
            f"calibration samples (ridge least squares): {', '.join(refitted[:5])}"
        )
    if skipped:
        notes.append(f"not refitted: {', '.join(skipped[:5])}")
    return notes


def _parameter_count(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        total += int(np.prod(init.dims)) if init.dims else 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    total += int(np.prod(attr.t.dims)) if attr.t.dims else 1
    return total


def apply(ctx: RecipeContext) -> RecipeOutcome:
    """Prune ``params['ratio']`` of the channels of every layer whose readers can follow."""
    params = validate_params(dict(ctx.params))
    original_bytes = Path(ctx.model_path).read_bytes()
    model = onnx.load_from_string(original_bytes)
    params_before = _parameter_count(model)
    consts = _Constants(model)
    main_nodes = {id(node) for node in model.graph.node}
    candidates = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if not candidates:
        raise RecipeNotApplicable("no Conv, Gemm or MatMul layer in the main graph")

    pruned: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    kept: dict[int, np.ndarray] = {}
    readers: list[onnx.NodeProto] = []
    for position, node in enumerate(candidates):
        if ctx.cancelled():
            raise Cancelled(f"{NAME} cancelled")
        label = _label(node)
        try:
            plan = _trace(node, consts, main_nodes)
            keep = _apply_plan(plan, params["ratio"], params["min_channels"], consts)
        except _Refused as why:
            refused[label] = str(why)
        else:
            kept[id(node)] = keep
            readers.extend(c for c, *_ in plan.consumers if c.op_type in ("Gemm", "MatMul"))
            pruned[label] = {
                "op": node.op_type,
                "channels_before": plan.channels,
                "channels_removed": plan.channels - len(keep),
                "channels_after": len(keep),
                "consumers": [_label(c) for c, *_ in plan.consumers],
            }
        consts.refresh_uses()
        ctx.progress((position + 1) / len(candidates) * 0.9)

    if not pruned:
        reasons = "; ".join(f"{name}: {why}" for name, why in list(refused.items())[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise RecipeNotApplicable(
            f"no layer can lose channels without changing another branch: {reasons}{more}"
        )

    refit_notes: list[str] = []
    if params["refit"] and readers:
        if ctx.calibration:
            order = {id(n): i for i, n in enumerate(model.graph.node)}
            unique = {id(n): n for n in readers}
            targets = sorted(unique.values(), key=lambda n: order[id(n)])
            refit_notes = _refit(targets, kept, original_bytes, consts, ctx)
        else:
            refit_notes = ["no calibration data: Gemm/MatMul readers were not refitted"]

    consts.drop_unused()
    # Stale intermediate shapes would contradict the new channel counts: recompute them.
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as error:  # shapes are a convenience: the engine verifies the variant
        ctx.log(f"{NAME}: shape inference failed after pruning ({error}); saved without it")
    variant_bytes = model.SerializeToString()
    Path(ctx.out_path).write_bytes(variant_bytes)
    ctx.progress(1.0)

    params_after = _parameter_count(model)
    removed_total = sum(p["channels_removed"] for p in pruned.values())
    notes = [
        f"removed {removed_total} channels/neurons in {len(pruned)} layers; "
        f"parameters {params_before:,} -> {params_after:,}",
    ]
    if refused:
        sample = "; ".join(f"{name}: {why}" for name, why in list(refused.items())[:3])
        notes.append(
            f"{len(refused)} layers left whole ({sample}{'; ...' if len(refused) > 3 else ''})"
        )
    notes.extend(refit_notes)
    notes.append("no fine-tuning was done: check the engine's fidelity figures")
    return RecipeOutcome(
        path=Path(ctx.out_path),
        params=params,
        notes=notes,
        extra={
            "layers": pruned,
            "refused": refused,
            "parameters_before": params_before,
            "parameters_after": params_after,
            "parameter_ratio": round(params_after / params_before, 4) if params_before else None,
            "compressed": compressed_sizes(original_bytes, variant_bytes),
        },
    )
