"""Knowledge distillation: train a much smaller student to imitate the uploaded teacher.

Quantization and pruning keep the teacher's architecture; distillation replaces it. The student
is either an ONNX architecture the operator uploaded (``student_path``) or one generated for the
common shapes (an MLP for vector inputs, a small CNN for one NCHW image input). Either way it is
an ONNX graph with the teacher's exact input/output signature: the trainer (PyTorch, CPU) only
updates its float initializers, and the variant is that same graph with the trained values, a
plain float model that ``int8-dynamic``/``int8-static`` can chain onto.

Soft targets are the teacher's outputs on the job's training split (every sample outside the
held-out evaluation split, passed as ``ctx.calibration``), computed with onnxruntime; the
held-out split drives early stopping. Synthetic inputs (no dataset) are refused. See ``training`` for the loss.

PyTorch is an optional extra (``pip install 'edgefleet[distill]'``). Importing this package does
not import torch: only ``apply`` does, and it raises ``MissingDependency`` when torch is absent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from compression.engine.base import (
    EngineError,
    Feeds,
    MissingDependency,
    RecipeContext,
    RecipeNotApplicable,
    RecipeOutcome,
)
from compression.engine.distill.students import (
    OutputSpec,
    Student,
    adapt_uploaded_student,
    classify_output,
    count_params,
    declared_dims,
    elem_type,
    generate_student,
    graph_inputs,
    with_weights,
)

NAME = "distill"
SUMMARY = (
    "Train a much smaller student (uploaded ONNX architecture, or a generated MLP/CNN) to imitate "
    "the model; slow (minutes), needs PyTorch and a dataset."
)
INSTALL_HINT = (
    "distill needs PyTorch: pip install 'edgefleet[distill]' (installs the CPU build, "
    "torch==2.13.0) on the machine that runs compression jobs"
)
DEFAULTS: dict[str, Any] = {
    "student_path": None,
    "architecture": "auto",
    "widths": [64],
    "width_multiplier": 0.5,
    "loss": "auto",
    "temperature": 4.0,
    "alpha": 0.5,
    "epochs": 100,
    "time_budget_s": 600.0,
    "batch_size": 64,
    "lr": 0.003,
    "seed": 0,
    "patience": 10,
    "threads": 1,
}
ARCHITECTURES = ("auto", "mlp", "cnn")
LOSSES = ("auto", "kl", "mse")
TEACHER_CHUNK = 256
HOLDOUT_FRACTION = 0.2
TARGETS_PROGRESS = 0.02
"""Share of the progress bar for computing the teacher's soft targets; training gets the rest."""


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fill in defaults and check types and ranges; raise ``EngineError`` with a plain message."""
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise EngineError(
            f"{NAME}: unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    p = {**DEFAULTS, **params}

    def number(key: str, kind: type, low: float, high: float = math.inf, low_open: bool = False):
        try:
            value = kind(p[key])
        except (TypeError, ValueError):
            raise EngineError(f"{NAME}: {key} must be a number, got {p[key]!r}") from None
        if (value <= low if low_open else value < low) or value > high:
            bound = f"{'>' if low_open else '>='} {low}" + (
                f" and <= {high}" if high != math.inf else ""
            )
            raise EngineError(f"{NAME}: {key} must be {bound}, got {value}")
        p[key] = value

    number("width_multiplier", float, 0.0, 16.0, low_open=True)
    number("temperature", float, 0.0, 100.0, low_open=True)
    number("alpha", float, 0.0, 1.0)
    number("epochs", int, 1, 100_000)
    number("time_budget_s", float, 0.0, low_open=True)
    number("batch_size", int, 1, 1_000_000)
    number("lr", float, 0.0, 10.0, low_open=True)
    number("seed", int, 0)
    number("patience", int, 1)
    number("threads", int, 1, 1024)
    if p["architecture"] not in ARCHITECTURES:
        raise EngineError(
            f"{NAME}: architecture must be one of {ARCHITECTURES}, got {p['architecture']!r}"
        )
    if p["loss"] not in LOSSES:
        raise EngineError(f"{NAME}: loss must be one of {LOSSES}, got {p['loss']!r}")
    widths = p["widths"]
    if isinstance(widths, int | str):
        widths = [widths]
    try:
        widths = [int(w) for w in widths]
    except (TypeError, ValueError):
        raise EngineError(
            f"{NAME}: widths must be a list of positive integers, got {p['widths']!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise EngineError(f"{NAME}: widths must be positive integers, got {widths}")
    p["widths"] = widths
    if p["student_path"] is not None:
        p["student_path"] = str(p["student_path"])
    return p


def _require_torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    return torch


def _batched(
    teacher: onnx.ModelProto, feeds: Feeds, split: str
) -> tuple[dict[str, np.ndarray], int]:
    """Rows ready to batch: the dataset's per-sample batches merged into one leading axis.

    The dataset stores sample ``i`` of input ``x`` as ``x[i]``, shaped like one inference (so an
    input ``[N, 64]`` is stored ``[n, 1, 64]``); arrays already shaped like the input are taken
    as rows. Returns the arrays and the number of rows per dataset sample.
    """
    out: dict[str, np.ndarray] = {}
    per_sample = 1
    for value in graph_inputs(teacher):
        if value.name not in feeds:
            raise RecipeNotApplicable(
                f"{NAME}: the {split} split has no array for input {value.name!r}"
            )
        arr = np.asarray(feeds[value.name])
        rank = len(declared_dims(value)) or arr.ndim - 1
        if arr.ndim == rank + 1 and rank >= 1:
            per_sample = arr.shape[1]
            arr = arr.reshape(arr.shape[0] * arr.shape[1], *arr.shape[2:])
        elif arr.ndim != rank:
            raise RecipeNotApplicable(
                f"{NAME}: {split} array {value.name!r} has shape {list(arr.shape)}, which does not "
                f"fit the input's rank {rank}"
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type(value))
        out[value.name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
    rows = {len(a) for a in out.values()}
    if len(rows) != 1:
        raise RecipeNotApplicable(
            f"{NAME}: the {split} arrays have different numbers of rows: {sorted(rows)}"
        )
    return out, per_sample


def _aligned_labels(
    labels: np.ndarray | None, rows: int, per_sample: int, notes: list[str]
) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != rows:
        notes.append(
            f"labels ignored: {len(labels)} labels for {rows} rows ({per_sample} rows per sample)"
        )
        return None
    return labels.astype(np.int64)


def _run_model(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run in chunks; a model with a fixed batch size gets chunks of that size (last one padded)."""
    rows = len(next(iter(feeds.values())))
    shape = session.get_inputs()[0].shape
    fixed = bool(shape) and isinstance(shape[0], int) and shape[0] > 0
    chunk = shape[0] if fixed else TEACHER_CHUNK
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows, chunk):
        piece = {k: v[start : start + chunk] for k, v in feeds.items()}
        real = len(next(iter(piece.values())))
        if fixed and real < chunk:
            piece = {
                k: np.concatenate([v, np.repeat(v[-1:], chunk - real, axis=0)])
                for k, v in piece.items()
            }
        parts.append([o[:real] for o in session.run(None, piece)])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _session(model: onnx.ModelProto | Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _targets(values: list[np.ndarray], specs: list[OutputSpec]) -> list[np.ndarray]:
    """The teacher's outputs as training targets: logits for class scores, flat values otherwise."""
    out = []
    for v, spec in zip(values, specs, strict=True):
        v = v.astype(np.float32).reshape(len(v), -1)
        if spec.kind == "class" and spec.form == "probs":
            v = np.log(np.clip(v, 1e-12, None))
        out.append(v)
    return out


def _check_interpreter(
    module, model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int
) -> None:
    """The trainer must compute what onnxruntime computes, or we would train the wrong graph."""
    import torch

    from compression.engine.distill.torch_graph import to_tensor

    sample = {k: v[:16] for k, v in feeds.items()}
    expected = _run_model(_session(model, threads), sample)
    try:
        with torch.no_grad():
            got = module({k: to_tensor(v) for k, v in sample.items()})
    except Exception as exc:  # any op failure means this graph cannot be trained as it is
        raise RecipeNotApplicable(
            f"{NAME}: the trainer cannot run the student on a batch of {len(expected[0])} rows "
            f"({type(exc).__name__}: {exc}); a student must accept any batch size"
        ) from exc
    for name, e, g in zip(module.output_names, expected, got, strict=True):
        g = g.numpy().astype(np.float64)
        e = e.astype(np.float64)
        if g.shape != e.shape or not np.allclose(
            g, e, rtol=1e-3, atol=1e-4 * (1 + np.abs(e).max())
        ):
            raise RecipeNotApplicable(
                f"{NAME}: the student's output {name!r} computed by the trainer differs from "
                "onnxruntime's; the student uses an op the trainer does not reproduce faithfully"
            )


def apply(ctx: RecipeContext) -> RecipeOutcome:
    """Distill ``ctx.model_path`` into a smaller student written to ``ctx.out_path``."""
    params = validate_params(dict(ctx.params))
    if ctx.synthetic:
        raise RecipeNotApplicable(
            f"{NAME} needs a real dataset: without one the engine only has random inputs "
            "synthesized from the input shapes, and a student trained on noise learns nothing "
            "about the data the model will see. Attach a dataset to the job (an .npz with one "
            "array per input, optionally labels)"
        )
    torch = _require_torch()
    from compression.engine.distill import training
    from compression.engine.distill.torch_graph import OnnxModule, to_tensor, unsupported_ops

    notes: list[str] = []
    if not ctx.calibration:
        raise RecipeNotApplicable(
            f"{NAME} needs a dataset to train on: attach one to the job (an .npz with one array "
            "per input, and optionally labels)"
        )
    teacher = onnx.load(str(ctx.model_path))
    threads = params["threads"]

    train_x, per_sample = _batched(teacher, ctx.calibration, "calibration")
    rows = len(next(iter(train_x.values())))
    train_y = _aligned_labels(ctx.calibration_labels, rows, per_sample, notes)
    if ctx.evaluation:
        held_x, held_per_sample = _batched(teacher, ctx.evaluation, "evaluation")
        held_y = _aligned_labels(
            ctx.evaluation_labels, len(next(iter(held_x.values()))), held_per_sample, notes
        )
    else:
        # Early stopping needs data the student does not train on.
        order = np.random.default_rng(params["seed"]).permutation(rows)
        cut = max(1, int(rows * HOLDOUT_FRACTION))
        held_idx, train_idx = order[:cut], order[cut:]
        held_x = {k: v[held_idx] for k, v in train_x.items()}
        train_x = {k: v[train_idx] for k, v in train_x.items()}
        held_y = train_y[held_idx] if train_y is not None else None
        train_y = train_y[train_idx] if train_y is not None else None
        notes.append(
            f"no held-out split: {cut} of {rows} calibration rows held out for early stopping"
        )
    if len(next(iter(train_x.values()))) < 2:
        raise RecipeNotApplicable(f"{NAME} needs at least a few training samples, got {rows}")
    ctx.log(f"{NAME}: computing the teacher's soft targets on {rows} training rows")
    teacher_session = _session(Path(ctx.model_path), threads)
    t_train = _run_model(teacher_session, train_x)
    t_held = _run_model(teacher_session, held_x)
    ctx.progress(TARGETS_PROGRESS)

    specs = [
        classify_output(out.name, values, params["loss"], elem_type(out))
        for out, values in zip(teacher.graph.output, t_train, strict=True)
    ]
    student: Student
    if params["student_path"]:
        student = adapt_uploaded_student(teacher, params["student_path"])
        for spec in specs:
            spec.student_form = "probs" if spec.form == "probs" else "logits"
    else:
        student = generate_student(
            teacher,
            train_x,
            specs,
            params["architecture"],
            params["widths"],
            params["width_multiplier"],
            params["seed"],
        )
    notes += student.notes
    bad = unsupported_ops(student.model)
    if bad:
        raise RecipeNotApplicable(
            f"{NAME}: the student uses op(s) the trainer does not support: {bad}"
        )

    # Cross-entropy applies to the first class-score output wide enough for every label.
    labels_out = None
    if train_y is not None:
        every = np.concatenate([train_y, held_y]) if held_y is not None else train_y
        for i, spec in enumerate(specs):
            if spec.kind == "class" and every.min() >= 0 and spec.shape[0] > every.max():
                labels_out = i
                break
        if labels_out is None:
            notes.append("labels ignored: no class-score output has as many classes as the labels")
    if labels_out is None:
        train_y = held_y = None

    with torch.random.fork_rng():
        torch.manual_seed(params["seed"])
        module = OnnxModule(student.model, student.frozen)
    _check_interpreter(module, student.model, held_x, threads)

    def split(x, targets, y):
        return training.Split(
            feeds={k: to_tensor(v) for k, v in x.items()},
            targets=[torch.from_numpy(t) for t in _targets(targets, specs)],
            labels=torch.from_numpy(y) if y is not None else None,
        )

    cfg = training.Config(
        **{
            k: params[k]
            for k in (
                "temperature",
                "alpha",
                "epochs",
                "time_budget_s",
                "batch_size",
                "lr",
                "seed",
                "patience",
                "threads",
            )
        }
    )
    student_params = count_params(student.model)
    teacher_params = count_params(teacher)
    ctx.log(
        f"{NAME}: training {student.source} student ({student_params} params, teacher "
        f"{teacher_params}) on {len(next(iter(train_x.values())))} rows, "
        f"{len(next(iter(held_x.values())))} held out"
    )
    result = training.train(
        module,
        specs,
        split(train_x, t_train, train_y),
        split(held_x, t_held, held_y),
        labels_out,
        cfg,
        ctx,
        progress=lambda fraction: ctx.progress(
            TARGETS_PROGRESS + (0.99 - TARGETS_PROGRESS) * fraction
        ),
    )
    variant = with_weights(student.model, module.weights())
    onnx.checker.check_model(variant)
    Path(ctx.out_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(variant, str(ctx.out_path))
    ctx.progress(1.0)

    notes.append(
        f"stopped by {result.stopped_by.replace('_', ' ')} after {result.epochs_run} epoch(s); "
        f"best held-out epoch {result.best_epoch}"
    )
    extra: dict[str, Any] = {
        "student": student.source,
        "teacher_params": teacher_params,
        "student_params": student_params,
        "param_ratio": round(teacher_params / max(student_params, 1), 2),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_by": result.stopped_by,
        "best_heldout_fidelity": round(result.best.fidelity, 4),
        "training_seconds": round(result.seconds, 2),
        "train_rows": len(next(iter(train_x.values()))),
        "heldout_rows": len(next(iter(held_x.values()))),
    }
    if result.best.agreement is not None:
        extra["best_heldout_agreement"] = round(result.best.agreement, 4)
    if labels_out is not None and held_y is not None:
        extra["heldout_accuracy"] = round(result.best.accuracy, 4)
        teacher_pred = _targets(t_held, specs)[labels_out].argmax(1)
        extra["teacher_heldout_accuracy"] = round(float((teacher_pred == held_y).mean()), 4)
    used = {**params}
    if student.source.startswith("generated"):
        used["architecture"] = student.source.removeprefix("generated-")
    return RecipeOutcome(path=Path(ctx.out_path), params=used, notes=notes, extra=extra)
