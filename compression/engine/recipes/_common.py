"""Small helpers shared by the engine's own quantization recipes."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx

from compression.engine.base import Cancelled, RecipeContext
from compression.engine.inspect import iter_nodes


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in iter_nodes(model.graph))


def work_dir(ctx: RecipeContext) -> Path:
    """The engine's scratch dir, or one next to the output when called directly."""
    if ctx.work_dir is not None:
        Path(ctx.work_dir).mkdir(parents=True, exist_ok=True)
        return Path(ctx.work_dir)
    return Path(tempfile.mkdtemp(prefix=".recipe-", dir=Path(ctx.out_path).parent))


def stage(model: onnx.ModelProto, ctx: RecipeContext, name: str) -> Path:
    path = work_dir(ctx) / name
    onnx.save(model, str(path))
    return path


def check_cancelled(ctx: RecipeContext) -> None:
    if ctx.cancelled():
        raise Cancelled("cancelled while the recipe ran")


def bool_param(recipe: str, key: str, value) -> bool:
    from compression.engine.base import EngineError

    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise EngineError(f"recipe '{recipe}': {key} must be true or false, got {value!r}")


def size_note(src: Path, dst: Path, what: str) -> str | None:
    """A plain explanation when a variant came out no smaller than its source."""
    before, after = src.stat().st_size, dst.stat().st_size
    if after < before:
        return None
    return (
        f"the {what} variant is not smaller ({after} bytes vs {before}): too few weights were "
        "quantized to pay for the added scales, zero points and conversion nodes"
    )
