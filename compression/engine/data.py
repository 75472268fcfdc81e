"""Inputs for calibration and verification: a validated .npz dataset, or synthesized inputs.

Dataset format (DESIGN.md): one array per model input, named like the input, whose first axis
indexes samples; sample ``i`` of input ``x`` is ``arr[i]``, fed as one inference. An input of
shape [1, 3, 224, 224] is stored as [n, 1, 3, 224, 224]. An optional ``labels`` array [n] holds
class indices. As a convenience, an input whose leading dim is symbolic (a batch axis) may also
be stored without the per-sample batch axis ([n, 3, 224, 224]); each row then becomes a batch of
one.

The split into calibration and held-out evaluation samples is deterministic (a fixed-seed
permutation), so two runs on the same dataset verify on the same samples. Recipes that train
(``distill``) get the training split: every sample outside the evaluation split.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compression.engine.base import EngineError, Feeds
from compression.engine.inspect import TensorSpec, sha256_file

LABELS = "labels"
SPLIT_SEED = 20240611


@dataclass
class Data:
    """Calibration and evaluation feeds plus where they came from."""

    calibration: Feeds
    evaluation: Feeds
    calibration_labels: np.ndarray | None = None
    evaluation_labels: np.ndarray | None = None
    synthetic: bool = False
    training: Feeds | None = None
    """Every sample outside the evaluation split (calibration included): what recipes that
    train (``distill``) learn from. None means the same as ``calibration``."""
    training_labels: np.ndarray | None = None
    sha256: str | None = None
    """sha256 of the dataset file (None for synthesized inputs)."""
    notes: list[str] = field(default_factory=list)

    @property
    def n_calibration(self) -> int:
        return _n_samples(self.calibration)

    @property
    def n_evaluation(self) -> int:
        return _n_samples(self.evaluation)

    @property
    def n_training(self) -> int:
        return _n_samples(self.training if self.training is not None else self.calibration)


def _n_samples(feeds: Feeds) -> int:
    return len(next(iter(feeds.values()))) if feeds else 0


def _dims(shape: list[int | str | None] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _same_kind(actual: np.dtype, expected: np.dtype) -> bool:
    kinds = {"f": "f", "i": "i", "u": "i", "b": "b"}
    return kinds.get(actual.kind) == kinds.get(expected.kind) and actual.kind in kinds


def _check_array(name: str, arr: np.ndarray, spec: TensorSpec, notes: list[str]) -> np.ndarray:
    """Return ``arr`` as [n, *sample_shape] in the input's dtype, or raise a clear error."""
    expected_dtype = np.dtype(spec.dtype) if spec.dtype != "unknown" else arr.dtype
    if arr.dtype != expected_dtype:
        if not _same_kind(arr.dtype, expected_dtype):
            raise EngineError(
                f"dataset array '{name}' has dtype {arr.dtype}, but model input '{spec.name}' "
                f"expects {expected_dtype}"
            )
        notes.append(f"dataset array '{name}' cast from {arr.dtype} to {expected_dtype}")
        arr = arr.astype(expected_dtype)
    if spec.shape is None:
        return arr
    rank = len(spec.shape)
    expected = f"[n, {', '.join('?' if d is None else str(d) for d in spec.shape)}]".replace(
        "[n, ]", "[n]"
    )
    if (
        arr.ndim == rank
        and rank >= 1
        and (isinstance(spec.shape[0], str) or spec.shape[0] in (1, None))
    ):
        arr = arr[:, None, ...]  # rows without their batch axis: each becomes a batch of one
    if arr.ndim != rank + 1:
        raise EngineError(
            f"dataset array '{name}' has shape {list(arr.shape)}; model input '{spec.name}' "
            f"{_dims(spec.shape)} needs {expected} (samples first)"
        )
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and arr.shape[axis + 1] != dim:
            raise EngineError(
                f"dataset array '{name}' has shape {list(arr.shape)}; model input '{spec.name}' "
                f"{_dims(spec.shape)} needs {expected}: axis {axis + 1} is "
                f"{arr.shape[axis + 1]}, expected {dim}"
            )
    return np.ascontiguousarray(arr)


def load_dataset(
    path: str | Path, inputs: list[TensorSpec]
) -> tuple[Feeds, np.ndarray | None, str, list[str]]:
    """Read and validate an .npz dataset against the model inputs.

    Returns (feeds, labels or None, sha256 of the file, notes)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"dataset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise EngineError(f"dataset {path.name} is not a readable .npz file: {exc}") from exc
    wanted = {spec.name: spec for spec in inputs}
    described = "; ".join(f"'{s.name}' {_dims(s.shape)} {s.dtype}" for s in inputs)
    unknown = sorted(set(arrays) - set(wanted) - {LABELS})
    missing = sorted(set(wanted) - set(arrays))
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing array(s) {missing}")
        if unknown:
            parts.append(f"array(s) {unknown} match no model input")
        raise EngineError(
            f"dataset {path.name}: {' and '.join(parts)}; the model's inputs are {described} "
            f"(plus an optional '{LABELS}' array of class indices)"
        )
    notes: list[str] = []
    feeds = {name: _check_array(name, arrays[name], spec, notes) for name, spec in wanted.items()}
    counts = {name: len(arr) for name, arr in feeds.items()}
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise EngineError(
                f"dataset array '{LABELS}' must be integer class indices of shape [n], "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        counts[LABELS] = len(labels)
    if len(set(counts.values())) > 1:
        raise EngineError(
            f"dataset {path.name}: arrays disagree on the number of samples: {counts}"
        )
    n = next(iter(counts.values()), 0)
    if n < 2:
        raise EngineError(f"dataset {path.name} holds {n} sample(s); at least 2 are needed")
    return (
        feeds,
        (labels.astype(np.int64) if labels is not None else None),
        sha256_file(path),
        notes,
    )


def resolve_shape(spec: TensorSpec, given: list[int] | None, notes: list[str]) -> list[int]:
    """A concrete shape for ``spec``: the user's, checked against fixed dims, or the model's own
    with a symbolic leading (batch) dim set to 1. Other unknown dims are an error."""
    if given is not None:
        given = [int(d) for d in given]
        if spec.shape is not None:
            if len(given) != len(spec.shape):
                raise EngineError(
                    f"input shape for '{spec.name}' has rank {len(given)}, the model's input is "
                    f"{_dims(spec.shape)} (rank {len(spec.shape)})"
                )
            for axis, (g, d) in enumerate(zip(given, spec.shape, strict=True)):
                if isinstance(d, int) and g != d:
                    raise EngineError(
                        f"input shape for '{spec.name}' sets axis {axis} to {g}, but the model "
                        f"fixes it to {d} ({_dims(spec.shape)})"
                    )
        if any(d <= 0 for d in given):
            raise EngineError(f"input shape for '{spec.name}' must be positive: {given}")
        return given
    if spec.shape is None:
        raise EngineError(
            f"input '{spec.name}' has unknown rank; give its shape, e.g. "
            f"--input-shape {spec.name}=1,3,224,224"
        )
    shape: list[int] = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0:
            shape.append(1)
            label = f" '{dim}'" if isinstance(dim, str) else ""
            notes.append(f"input '{spec.name}': dynamic batch axis{label} set to 1")
        else:
            example = ",".join(str(d) if isinstance(d, int) else "N" for d in spec.shape)
            raise EngineError(
                f"input '{spec.name}' {_dims(spec.shape)} has a dynamic dimension "
                f"'{dim if dim is not None else '?'}' at axis {axis}; give concrete sizes, "
                f"e.g. --input-shape {spec.name}={example.replace('N', '1')}"
            )
    return shape


SAMPLE_RATE_NAMES = re.compile(r"(^|[_.])(sr|sample_?rate|sampling_?rate|rate)$", re.IGNORECASE)
DEFAULT_SAMPLE_RATE = 16000


def scalar_int_default(name: str) -> int:
    """The constant synthesized for a scalar integer input: 16000 for a sample rate (by name:
    ``sr``, ``sample_rate``, ``sampling_rate``), otherwise 1 (a valid count, size or flag)."""
    return DEFAULT_SAMPLE_RATE if SAMPLE_RATE_NAMES.search(name) else 1


def synthesize(
    inputs: list[TensorSpec],
    input_shapes: dict[str, list[int]] | None,
    n_samples: int,
    seed: int = 0,
) -> tuple[Feeds, list[str]]:
    """Random inputs shaped like the model's (standard normal floats, small non-negative
    integers, random booleans; a scalar integer input gets a constant, see
    ``scalar_int_default``). Fidelity measured on them is marked synthetic."""
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(input_shapes) - {s.name for s in inputs})
    if unknown:
        raise EngineError(
            f"--input-shape names {unknown}, but the model's inputs are {[s.name for s in inputs]}"
        )
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    feeds: Feeds = {}
    for spec in inputs:
        shape = resolve_shape(spec, input_shapes.get(spec.name), notes)
        dtype = np.dtype(spec.dtype) if spec.dtype != "unknown" else np.dtype(np.float32)
        full = [n_samples, *shape]
        if not shape and dtype.kind in "iu":
            # A scalar integer is a setting (a sample rate, a count, a flag), not data: random
            # values would run branches real use never takes (silero-vad refuses anything but
            # 8000 and 16000). Feed one plausible constant and say which.
            value = scalar_int_default(spec.name)
            arr = np.full(full, value, dtype=dtype)
            notes.append(
                f"input '{spec.name}' is a scalar {dtype}: synthesized as the constant {value} "
                f"({'a sample rate, from its name' if value != 1 else 'give a dataset for others'})"
            )
        elif dtype.kind == "f":
            arr = rng.standard_normal(full).astype(dtype)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 10, size=full).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.random(full) < 0.5
        else:
            raise EngineError(
                f"cannot synthesize inputs of type {spec.dtype} for '{spec.name}': give a dataset"
            )
        feeds[spec.name] = arr
    return feeds, notes


def split_indices(
    n: int,
    *,
    calibration_samples: int = 128,
    evaluation_samples: int = 500,
    seed: int = SPLIT_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted sample indices (calibration, evaluation, training) of a deterministic split.

    A fixed-seed permutation: calibration takes its first samples (at most half, at most
    ``calibration_samples``), evaluation the next ones (at most ``evaluation_samples``), and
    training is every sample not in evaluation (so it includes calibration). Evaluation never
    shares a sample with calibration or training."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = max(1, min(calibration_samples, n // 2))
    n_eval = max(1, evaluation_samples)
    cal_idx = np.sort(order[:n_cal])
    eval_idx = np.sort(order[n_cal : n_cal + n_eval])
    train_idx = np.sort(np.concatenate([order[:n_cal], order[n_cal + n_eval :]]))
    return cal_idx, eval_idx, train_idx


def split(
    feeds: Feeds,
    labels: np.ndarray | None,
    *,
    calibration_samples: int = 128,
    evaluation_samples: int = 500,
    seed: int = SPLIT_SEED,
) -> tuple[Feeds, np.ndarray | None, Feeds, np.ndarray | None]:
    """Deterministic split: a fixed-seed permutation; calibration takes at most half the samples
    (and at most ``calibration_samples``), evaluation the rest (at most ``evaluation_samples``).
    The two never share a sample. (``split_indices`` also gives the training split.)"""
    cal_idx, eval_idx, _ = split_indices(
        _n_samples(feeds),
        calibration_samples=calibration_samples,
        evaluation_samples=evaluation_samples,
        seed=seed,
    )
    return (
        _take(feeds, cal_idx),
        None if labels is None else labels[cal_idx],
        _take(feeds, eval_idx),
        None if labels is None else labels[eval_idx],
    )


def sample_feed(feeds: Feeds, index: int) -> dict[str, np.ndarray]:
    """Sample ``index`` of every input as onnxruntime takes it: always an ``np.ndarray``.

    Indexing a [n] array (a scalar input such as silero-vad's int64 ``sr``) gives a numpy
    scalar (``numpy.int64``), which onnxruntime refuses ("Unable to handle object of type
    numpy.int64"); ``np.asarray`` with the array's dtype turns it into a 0-d array."""
    return {name: np.asarray(arr[index], dtype=arr.dtype) for name, arr in feeds.items()}


def _take(feeds: Feeds, idx: np.ndarray) -> Feeds:
    return {name: arr[idx] for name, arr in feeds.items()}


def prepare_data(
    inputs: list[TensorSpec],
    *,
    dataset: str | Path | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    calibration_samples: int = 128,
    evaluation_samples: int = 500,
    synthetic_samples: int = 64,
    seed: int = 0,
) -> Data:
    """Calibration and evaluation data for a model: from ``dataset`` when given, otherwise
    synthesized from the input specs (and ``input_shapes`` for dynamic dims)."""
    if dataset is not None:
        feeds, labels, digest, notes = load_dataset(dataset, inputs)
        if input_shapes:
            notes.append("--input-shape ignored: the dataset fixes the input shapes")
        synthetic = False
    else:
        feeds, notes = synthesize(inputs, input_shapes, synthetic_samples, seed=seed)
        labels, digest, synthetic = None, None, True
        notes.append(
            "no dataset: fidelity is measured on random synthetic inputs, which says little "
            "about accuracy on real data"
        )
    cal_idx, eval_idx, train_idx = split_indices(
        _n_samples(feeds),
        calibration_samples=calibration_samples,
        evaluation_samples=evaluation_samples,
    )

    def labels_at(idx: np.ndarray) -> np.ndarray | None:
        return None if labels is None else labels[idx]

    return Data(
        _take(feeds, cal_idx),
        _take(feeds, eval_idx),
        labels_at(cal_idx),
        labels_at(eval_idx),
        synthetic=synthetic,
        sha256=digest,
        notes=notes,
        training=_take(feeds, train_idx),
        training_labels=labels_at(train_idx),
    )


def feeds_digest(feeds: Feeds) -> str:
    """A short fingerprint of in-memory feeds (for lineage when no file exists)."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(feeds[name]).tobytes())
    return digest.hexdigest()
