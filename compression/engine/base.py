"""The contract every recipe of the compression engine follows.

This package is plain Python (onnx, onnxruntime, numpy): it never imports Django, so the Celery
tasks, the ``compress`` management command and the tests all call the same functions.

A recipe is a function ``apply(ctx: RecipeContext) -> RecipeOutcome`` that reads
``ctx.model_path`` and writes one ONNX file at ``ctx.out_path``. Recipes do not verify their
output: the engine verifies every variant the same way afterwards (checker, load, run, fidelity,
size, latency), so a recipe cannot mark its own homework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
"""Arrays keyed by model input name, with a leading sample axis (sample i of x is x[i])."""


class EngineError(Exception):
    """A problem the operator must see, with a message that says what to do."""


class RecipeNotApplicable(EngineError):
    """The recipe refuses this model, and says plainly why (e.g. no prunable Conv/Gemm chain)."""


class MissingDependency(EngineError):
    """An optional dependency (e.g. torch for ``distill``) is not installed; says how to get it."""


@dataclass
class RecipeContext:
    """Everything a recipe may use. Recipes must treat the inputs as read-only."""

    model_path: Path
    """The source model, after the engine's pre-processing (Constant weights turned into
    initializers, shape inference)."""
    out_path: Path
    """Where the recipe writes its variant (a single .onnx file)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Recipe parameters, already validated; unknown keys are rejected before ``apply``."""
    calibration: Feeds | None = None
    """Calibration split of the dataset (or synthesized inputs), one array per input. For
    ``distill`` the engine passes every sample outside the held-out evaluation split here."""
    calibration_labels: np.ndarray | None = None
    evaluation: Feeds | None = None
    """Held-out split, used by the engine for verification; recipes that search (mixed precision
    fallback, distillation early stopping) may use it too."""
    evaluation_labels: np.ndarray | None = None
    synthetic: bool = False
    """True when no dataset was given and ``calibration``/``evaluation`` are random inputs
    synthesized from the input specs. Recipes that learn from data (``distill``) refuse them."""
    work_dir: Path | None = None
    """A private scratch directory, removed by the engine afterwards."""
    log: Callable[[str], None] = print
    progress: Callable[[float], None] = lambda fraction: None
    """Reports progress of this recipe alone, from 0.0 to 1.0."""
    cancelled: Callable[[], bool] = lambda: False
    """Long recipes poll this and raise ``Cancelled`` when it returns True."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Engine settings a recipe may honour: ``cosine_min`` and ``top1_min`` (the job's
    tolerance, for recipes that search until within it) and ``threads``."""


class Cancelled(EngineError):
    """The job was cancelled while the recipe ran."""


@dataclass
class RecipeOutcome:
    """What a recipe reports besides the file it wrote."""

    path: Path
    params: dict[str, Any] = field(default_factory=dict)
    """The parameters actually used (defaults filled in)."""
    notes: list[str] = field(default_factory=list)
    """Human-readable decisions, e.g. 'Conv excluded: ConvInteger is slower on this CPU'."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Recipe-specific measurements, e.g. {'sparsity': 0.5} or {'student_params': 1234}."""
