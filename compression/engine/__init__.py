"""EdgeFleet's compression engine: ONNX model in, verified smaller variants out.

Plain Python (onnx, onnxruntime, numpy), no Django: the Celery tasks, the ``compress``
management command and the tests all call ``compress``.

    from compression.engine import compress
    report = compress("model.onnx", "auto", dataset="data.npz", out_dir="out/")
    print(report.to_json())

Recipes: see ``compression.engine.recipes.list_recipes()``; ``auto`` tries a bounded grid and
recommends the smallest accepted variant.
"""

from compression.engine.base import (
    Cancelled,
    EngineError,
    MissingDependency,
    RecipeContext,
    RecipeNotApplicable,
    RecipeOutcome,
)
from compression.engine.pipeline import EngineOptions, compress
from compression.engine.recipes import explain, list_recipes
from compression.engine.report import CompressionReport, VariantReport

__all__ = [
    "Cancelled",
    "CompressionReport",
    "EngineError",
    "EngineOptions",
    "MissingDependency",
    "RecipeContext",
    "RecipeNotApplicable",
    "RecipeOutcome",
    "VariantReport",
    "compress",
    "explain",
    "list_recipes",
]
