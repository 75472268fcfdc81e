"""Float16 conversion of weights and math, with float32 inputs and outputs kept.

Not every op has a float16 CPU kernel in onnxruntime, and control-flow subgraphs often trip the
converter. So the converted model is loaded and run on one sample; when that fails, the op type
named in the error (or, failing that, If/Loop/Scan) is added to the block list and the model is
converted again, a bounded number of times. The block list used is reported in the notes.
"""

from __future__ import annotations

import re
from typing import Any

import onnx

from compression.engine.base import EngineError, RecipeContext, RecipeOutcome
from compression.engine.data import sample_feed
from compression.engine.inspect import check_model, runtime_session
from compression.engine.recipes._common import bool_param, check_cancelled, op_counts, size_note

NAME = "fp16"
SUMMARY = "Half-precision weights and math with float32 inputs and outputs."
CONTROL_FLOW = ("If", "Loop", "Scan")
DEFAULTS: dict[str, Any] = {"keep_io_types": True, "op_block_list": [], "max_retries": 8}
_OP_IN_ERROR = (
    re.compile(r"implementation for (\w+)\("),
    re.compile(r"op_type[=:] ?'?(\w+)"),
    re.compile(r"Op \((\w+)\)"),
    re.compile(r"node (?:with name )?'?[^']*'? ?\((\w+)\)"),
)


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    from compression.engine.recipes import check_params

    merged = check_params(params, DEFAULTS, NAME)
    merged["keep_io_types"] = bool_param(NAME, "keep_io_types", merged["keep_io_types"])
    if isinstance(merged["op_block_list"], str):
        merged["op_block_list"] = [o for o in merged["op_block_list"].split(",") if o]
    merged["op_block_list"] = list(merged["op_block_list"])
    merged["max_retries"] = int(merged["max_retries"])
    return merged


def op_from_error(message: str, present: set[str]) -> str | None:
    """The op type an onnxruntime error blames, if it is one the model uses."""
    for pattern in _OP_IN_ERROR:
        for match in pattern.finditer(message):
            if match.group(1) in present:
                return match.group(1)
    return None


def _try(path, sample) -> str | None:
    try:
        session = runtime_session(path)
        if sample is not None:
            session.run(None, sample)
    except Exception as exc:
        return str(exc)
    return None


def apply(ctx: RecipeContext) -> RecipeOutcome:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    params = validate_params(ctx.params)
    source = onnx.load(str(ctx.model_path))
    present = set(op_counts(source))
    sample = None
    feeds = ctx.calibration or ctx.evaluation
    if feeds:
        sample = sample_feed(feeds, 0)
    blocked = list(params["op_block_list"])
    notes: list[str] = []
    error = None
    for attempt in range(params["max_retries"] + 1):
        check_cancelled(ctx)
        model = onnx.ModelProto.FromString(source.SerializeToString())
        try:
            converted = convert_float_to_float16(
                model,
                keep_io_types=params["keep_io_types"],
                op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(blocked)),
            )
            # The converter appends its input/output Casts at the end of the node list;
            # onnxruntime's own helper restores the topological order the checker requires.
            OnnxModel(converted).topological_sort()
            onnx.save(converted, str(ctx.out_path))
            check_model(ctx.out_path)
            error = _try(ctx.out_path, sample)
        except Exception as exc:
            error = str(exc)
        if error is None:
            break
        culprit = op_from_error(error, present - set(blocked))
        if culprit is None and present & set(CONTROL_FLOW) - set(blocked):
            new = sorted(present & set(CONTROL_FLOW) - set(blocked))
        elif culprit is not None:
            new = [culprit]
        else:
            break
        blocked += new
        notes.append(
            f"attempt {attempt + 1} failed ({error.splitlines()[0][:160]}); kept {', '.join(new)} in float32"
        )
        ctx.progress(min(0.9, (attempt + 1) / (params["max_retries"] + 1)))
    if error is not None:
        ctx.out_path.unlink(missing_ok=True)
        raise EngineError(f"float16 conversion does not run on this runtime: {error[:400]}")
    extra_blocked = sorted(set(blocked))
    if extra_blocked:
        notes.append(f"ops kept in float32: {', '.join(extra_blocked)}")
    note = size_note(ctx.model_path, ctx.out_path, NAME)
    if note:
        notes.append(note)
    ctx.progress(1.0)
    return RecipeOutcome(
        path=ctx.out_path,
        params={**params, "op_block_list": extra_blocked},
        notes=notes,
        extra={"blocked_ops": extra_blocked},
    )
