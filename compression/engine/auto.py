"""``auto``: a bounded grid of recipes and settings, every one verified the same way.

The grid is small on purpose (about eight variants): both int8 flavours with their two most
useful settings, 4-bit weights, float16, pruning followed by int8, and structured pruning. A
recipe whose module is not installed is skipped with a note; a recipe that refuses the model
stays in the report as a ``failed`` variant marked ``not_applicable``, so the operator sees
every evaluation. The Pareto frontier and the recommendation rule live in ``report.py``.

Distillation trains a network (seconds on toy models, minutes to hours on real ones), so it is
never tried by surprise: ``distill`` and ``distill+int8-dynamic`` join the grid only when the
job asks, with the engine option ``include_distill=True`` (or by naming them in
``auto_recipes``).
"""

from __future__ import annotations

from typing import Any

from compression.engine.base import EngineError
from compression.engine.recipes import REGISTRY, load_module, parse_chain

GRID: list[tuple[str, dict[str, Any]]] = [
    ("int8-dynamic", {"per_channel": False}),
    ("int8-dynamic", {"per_channel": True}),
    ("int8-static", {"calibration": "minmax"}),
    ("int8-static", {"calibration": "percentile"}),
    ("int4-weight", {"block_size": 32}),
    ("fp16", {}),
    ("prune-magnitude+int8-dynamic", {}),
    ("prune-structured", {}),
]
ON_REQUEST: list[tuple[str, dict[str, Any]]] = [
    ("distill", {}),
    ("distill+int8-dynamic", {}),
]
"""Grid entries with a recipe that ``auto`` runs only when asked (``RecipeSpec.auto`` False)."""


def candidates(
    only: list[str] | None = None, *, include_distill: bool = False
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The grid entries whose recipe modules import, and notes on those skipped. ``only``
    restricts the grid to the given recipe (or chain) names; recipes that ``auto`` does not try
    by default (``distill``) are added when ``include_distill`` is set or ``only`` names them."""
    chosen, notes = [], []
    unavailable: dict[str, str] = {}
    for recipe, params in GRID + ON_REQUEST:
        if only is not None and recipe not in only:
            continue
        asked = include_distill or (only is not None and recipe in only)
        steps = parse_chain(recipe)
        missing = [s for s in steps if s in unavailable or not (REGISTRY[s].auto or asked)]
        for step in steps:
            if step in unavailable or step in missing:
                continue
            try:
                load_module(step)
            except EngineError as exc:
                unavailable[step] = str(exc)
                missing.append(step)
        if missing:
            continue
        chosen.append((recipe, dict(params)))
    for step, why in unavailable.items():
        notes.append(f"auto skipped {step}: {why}")
    return chosen, notes
