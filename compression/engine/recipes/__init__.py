"""The recipe registry: names, one-line explanations, lazy imports, parameter validation, chains.

Recipe modules are imported only when used, so a recipe whose module or optional dependency is
missing fails with a clear ``EngineError`` instead of breaking the whole engine.

Each recipe module exposes ``apply(ctx) -> RecipeOutcome`` and either ``validate_params(params)
-> dict`` (defaults filled in, unknown keys refused) or a ``DEFAULTS`` dict.

A chain ``a+b`` applies ``a`` and then ``b`` to a's output. Its parameters are either flat
(each key goes to every step that knows it) or nested per step: ``{"prune-magnitude":
{"sparsity": 0.7}, "int8-dynamic": {"per_channel": True}}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compression.engine.base import EngineError, MissingDependency


@dataclass(frozen=True)
class RecipeSpec:
    name: str
    target: str
    """'module.path:function'."""
    summary: str
    """One line, shown on the dashboard next to the recipe's name."""
    auto: bool = True
    """Whether ``auto`` tries this recipe without being asked (``distill`` only on request)."""
    keeps_shapes: bool = True
    """False for recipes that change intermediate tensor shapes: the engine hands them the
    model without the pre-processing's shape annotations (``value_info``), which they would
    otherwise contradict."""

    @property
    def module(self) -> str:
        return self.target.split(":", 1)[0]


_SPECS = [
    RecipeSpec(
        "int8-dynamic",
        "compression.engine.recipes.int8_dynamic:apply",
        "8-bit weights, activations quantized on the fly: about 4x smaller, no calibration data "
        "needed; Conv is left in float by default.",
    ),
    RecipeSpec(
        "int8-static",
        "compression.engine.recipes.int8_static:apply",
        "8-bit weights and activations (QDQ) calibrated on your data, with a float fallback for "
        "sensitive nodes: about 4x smaller, often faster.",
    ),
    RecipeSpec(
        "int4-weight",
        "compression.engine.recipes.int4_weight:apply",
        "4-bit block-quantized MatMul weights (MatMulNBits): up to 8x smaller weights for "
        "MatMul-heavy models such as MLPs and transformers.",
    ),
    RecipeSpec(
        "fp16",
        "compression.engine.recipes.fp16:apply",
        "Half-precision weights and math with float32 inputs and outputs: 2x smaller; on CPUs "
        "often no faster.",
    ),
    RecipeSpec(
        "prune-magnitude",
        "compression.engine.recipes.prune_magnitude:apply",
        "Zero the smallest-magnitude weights (unstructured): same shapes, a much smaller "
        "compressed download; pairs well with int8.",
    ),
    RecipeSpec(
        "prune-structured",
        "compression.engine.recipes.prune_structured:apply",
        "Remove whole channels or neurons with the least weight: a genuinely smaller and faster "
        "dense model, at some accuracy cost.",
        keeps_shapes=False,
    ),
    RecipeSpec(
        "distill",
        "compression.engine.distill:apply",
        "Train a smaller student network to mimic the model on your data (needs PyTorch and a "
        "dataset); slow, biggest gains.",
        auto=False,
    ),
]
REGISTRY: dict[str, RecipeSpec] = {spec.name: spec for spec in _SPECS}
AUTO = "auto"
DISTILL = "distill"


def parse_chain(recipe: str) -> list[str]:
    """'prune-magnitude+int8-dynamic' -> ['prune-magnitude', 'int8-dynamic'], names checked."""
    steps = [part.strip() for part in recipe.split("+")]
    if not recipe.strip() or any(not step for step in steps):
        raise EngineError(f"empty recipe name in '{recipe}'")
    for step in steps:
        if step == AUTO:
            if len(steps) > 1:
                raise EngineError("'auto' cannot be part of a chain")
            continue
        if step not in REGISTRY:
            raise EngineError(
                f"unknown recipe '{step}'; known recipes: {', '.join(sorted(REGISTRY))}, auto"
            )
    return steps


def explain(recipe: str) -> str:
    """One line for a recipe or a chain."""
    if recipe == AUTO:
        return (
            "Try every applicable recipe, verify each one and recommend the best accepted variant."
        )
    return " Then: ".join(REGISTRY[step].summary for step in parse_chain(recipe))


def list_recipes() -> list[dict[str, Any]]:
    """[{name, summary, auto}] for the dashboard and ``--help`` (imports nothing)."""
    return [{"name": s.name, "summary": s.summary, "auto": s.auto} for s in _SPECS]


def load_module(name: str):
    """Import a recipe's module, turning a missing module or dependency into an EngineError."""
    spec = REGISTRY[name]
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name and (spec.module == exc.name or spec.module.startswith(exc.name + ".")):
            raise EngineError(
                f"recipe '{name}' is not available in this installation "
                f"(module {spec.module} is missing)"
            ) from exc
        raise MissingDependency(
            f"recipe '{name}' needs the Python package '{exc.name}', which is not installed"
            + (" (pip install 'edgefleet[distill]')" if name == "distill" else "")
        ) from exc
    except ImportError as exc:
        raise EngineError(f"recipe '{name}' cannot be imported: {exc}") from exc


def resolve(name: str) -> Callable:
    """The recipe's ``apply`` function."""
    module = load_module(name)
    func_name = REGISTRY[name].target.split(":", 1)[1]
    func = getattr(module, func_name, None)
    if not callable(func):
        raise EngineError(f"recipe '{name}': {REGISTRY[name].module} has no {func_name}()")
    return func


def defaults(name: str) -> dict[str, Any]:
    module = load_module(name)
    return dict(getattr(module, "DEFAULTS", {}))


def validate_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in; unknown keys and bad values raise EngineError naming the recipe."""
    params = dict(params or {})
    module = load_module(name)
    validator = getattr(module, "validate_params", None)
    if callable(validator):
        return validator(params)
    known = getattr(module, "DEFAULTS", None)
    if known is None:
        if params:
            raise EngineError(f"recipe '{name}' takes no parameters, got {sorted(params)}")
        return {}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise EngineError(
            f"recipe '{name}': unknown parameter(s) {unknown}; known: {sorted(known)}"
        )
    return {**known, **params}


def split_chain_params(steps: list[str], params: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Route a chain's parameters to its steps (nested by step name, or flat by key), then
    validate each step's share. A flat key no step knows is an error."""
    params = dict(params or {})
    if len(steps) == 1 and steps[0] not in params:
        return [validate_params(steps[0], params)]
    per_step: list[dict[str, Any]] = [dict(params.pop(step, None) or {}) for step in steps]
    if params:
        known = [set(defaults(step)) for step in steps]
        for key, value in params.items():
            targets = [i for i, keys in enumerate(known) if key in keys]
            if not targets:
                raise EngineError(
                    f"parameter '{key}' is not known to any step of {'+'.join(steps)}"
                )
            for i in targets:
                per_step[i].setdefault(key, value)
    return [validate_params(step, p) for step, p in zip(steps, per_step, strict=True)]


def check_params(names: dict[str, Any], allowed: dict[str, Any], recipe: str) -> dict[str, Any]:
    """Shared helper for our recipes' ``validate_params``: unknown keys refused, defaults in."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise EngineError(
            f"recipe '{recipe}': unknown parameter(s) {unknown}; known: {sorted(allowed)}"
        )
    return {**allowed, **names}
