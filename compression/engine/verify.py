"""Verify a variant against the original model: the same checks for every recipe.

A variant is ``accepted`` only when all of these hold:
- it passes the full ONNX checker and loads in onnxruntime (CPUExecutionProvider);
- it runs on every held-out input;
- on every output, the minimum per-sample cosine similarity is at least ``cosine_min``, and
  top-1 agreement is at least ``top1_min`` where an output looks like class scores;
- if ``accuracy_drop_max`` is set and labels exist, accuracy drops by no more than that;
- for a *distilled* variant (the recipe chain includes ``distill``) the rule for class scores is
  different, because a student trained with a KL loss matches the teacher's decisions, not its
  raw logits (the KL loss ignores a per-sample shift, so logit cosine says nothing): top-1
  agreement at least ``distill_top1_min`` and, when labels exist, an accuracy drop of at most
  ``accuracy_drop_max`` (0.02 when unset); other outputs need a mean cosine of at least
  ``cosine_min`` and a relative L2 error of at most ``distill_relative_error_max``;
- it is smaller than the original (raw file or gzip);
- it is not slower: the median of paired latency ratios (variant / original over interleaved
  runs) is at most ``1 + latency_slack``. The slack (default 5%) absorbs timer noise only.

Anything else is ``rejected`` with the reason in plain words; an exception is ``failed``.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from compression.engine.base import EngineError, Feeds
from compression.engine.data import sample_feed
from compression.engine.inspect import check_model, iter_graphs, runtime_session, sha256_file

ACCEPTED, REJECTED, FAILED = "accepted", "rejected", "failed"

COMPUTE_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "Conv",
        "ConvTranspose",
        "Attention",
        "LSTM",
        "GRU",
        "RNN",
        "Gather",
        "MultiHeadAttention",
        "EmbedLayerNormalization",
    }
)
QUANTIZED_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QGemm",
        "QAttention",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
        "QEmbedLayerNormalization",
        "QLinearAdd",
    }
)
LOW_PRECISION = frozenset(
    {
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT4,
        TensorProto.UINT4,
    }
)


@dataclass
class Tolerance:
    """How close a variant must stay to the original to be accepted."""

    cosine_min: float = 0.99
    top1_min: float = 0.99
    accuracy_drop_max: float | None = None
    """Largest allowed accuracy drop vs the original when labels exist. Unset: not checked,
    except for distilled variants, which use ``DISTILL_ACCURACY_DROP_MAX``."""
    latency_slack: float = 0.05
    distill_top1_min: float = 0.97
    """Top-1 agreement a distilled variant needs on class-score outputs (replaces cosine)."""
    distill_relative_error_max: float = 0.1
    """Relative L2 error a distilled variant may have on outputs that are not class scores."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def distill_accuracy_drop_max(self) -> float:
        if self.accuracy_drop_max is None:
            return DISTILL_ACCURACY_DROP_MAX
        return self.accuracy_drop_max


DISTILL_ACCURACY_DROP_MAX = 0.02
RULE_OUTPUTS = "outputs"
"""Default rule: every output close to the original's (cosine, plus top-1 for class scores)."""
RULE_DECISIONS = "decisions"
"""Distilled variants: class scores judged by top-1 agreement and accuracy, not by cosine."""


def rule_for(distilled: bool, fid: dict[str, Any] | None = None) -> tuple[str, str]:
    """(rule name, the sentence the report shows) for a variant."""
    if not distilled:
        return RULE_OUTPUTS, (
            "judged by cosine similarity on every output (and top-1 agreement on class scores)"
        )
    entries = list((fid or {}).get("outputs", {}).values())
    has_class = not entries or any("top1_agreement" in e for e in entries)
    has_other = any("top1_agreement" not in e for e in entries)
    if has_class:
        text = "judged by top-1 agreement and accuracy because distillation changes logits"
        if fid is not None and fid.get("accuracy") is None:
            text = "judged by top-1 agreement (no labels, so no accuracy) because distillation changes logits"
        if has_other:
            text += "; other outputs by mean cosine and relative error"
    else:
        text = "judged by mean cosine and relative error because distillation changes outputs"
    return RULE_DECISIONS, text


@dataclass
class LatencySettings:
    """Latency measurement: fixed threads, no spinning, warm-up, interleaved runs."""

    threads: int = 1
    warmup: int = 5
    runs: int | None = None
    """Fixed number of measured runs per model; None picks it from ``budget_s``."""
    budget_s: float = 2.0
    min_runs: int = 20
    max_runs: int = 1000


@dataclass
class Verification:
    status: str
    reason: str = ""
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    sha256: str | None = None
    latency_ms: dict[str, float] | None = None
    baseline_latency_ms: dict[str, float] | None = None
    latency_ratio: float | None = None
    fidelity: dict[str, Any] = field(default_factory=dict)
    quantized_ops_share: float | None = None
    within_tolerance: bool = False
    """Fidelity within tolerance (the variant may still be rejected for speed or size)."""
    notes: list[str] = field(default_factory=list)


def gzip_size(path: str | Path, level: int = 6) -> int:
    """Size of the file once deflated (what a gzip download would weigh), streamed."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    total = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def quantized_ops_share(model: onnx.ModelProto) -> float | None:
    """Share of compute ops (MatMul, Gemm, Conv, attention, recurrent, Gather) that run in lower
    precision: integer/4-bit ops, ops fed by DequantizeLinear (QDQ), or ops with float16/int
    weights. None when the model has no compute op."""
    quantized = total = 0
    for graph in iter_graphs(model.graph):
        producers = {out: node.op_type for node in graph.node for out in node.output}
        inits = {init.name: init.data_type for init in graph.initializer}
        for node in graph.node:
            if node.op_type in QUANTIZED_OPS:
                quantized += 1
                total += 1
            elif node.op_type in COMPUTE_OPS:
                total += 1
                if any(producers.get(i) == "DequantizeLinear" for i in node.input) or any(
                    inits.get(i) in LOW_PRECISION for i in node.input
                ):
                    quantized += 1
    return None if total == 0 else round(quantized / total, 4)


def _batchable(session) -> bool:
    """Every input has a leading axis of unknown size (symbolic, unknown, or written -1/0)."""
    return all(
        inp.shape and not (isinstance(inp.shape[0], int) and inp.shape[0] > 0)
        for inp in session.get_inputs()
    )


def run_samples(session, feeds: Feeds, *, chunk: int = 64) -> dict[str, np.ndarray]:
    """Run every sample (``feeds[name][i]`` is one inference) and return each output stacked
    as [n, *per-sample shape]. Samples are batched along a symbolic leading axis when the
    model allows it, which gives the same numbers much faster."""
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    if _batchable(session) and all(arr.ndim >= 2 for arr in feeds.values()):
        rows = {name: arr.shape[1] for name, arr in feeds.items()}
        results: dict[str, list[np.ndarray]] = {name: [] for name in names}
        ok = len(set(rows.values())) == 1
        for start in range(0, n, chunk) if ok else ():
            part = {k: v[start : start + chunk] for k, v in feeds.items()}
            k = len(next(iter(part.values())))
            batch = {
                name: arr.reshape(k * arr.shape[1], *arr.shape[2:]) for name, arr in part.items()
            }
            try:
                outs = session.run(names, batch)
            except Exception:  # a symbolic batch axis the graph cannot really batch on
                ok = False
                break
            if any(o.ndim == 0 or o.shape[0] != k * next(iter(rows.values())) for o in outs):
                ok = False
                break
            for name, out in zip(names, outs, strict=True):
                results[name].append(out.reshape(k, -1, *out.shape[1:]))
        if ok:
            return {name: np.concatenate(parts) for name, parts in results.items()}
    stacked: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for i in range(n):
        outs = session.run(names, sample_feed(feeds, i))
        for name, out in zip(names, outs, strict=True):
            stacked[name].append(np.asarray(out))
    return {name: np.stack(parts) for name, parts in stacked.items()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    cos = np.where(both_zero, 1.0, cos)
    return np.nan_to_num(cos, nan=0.0, posinf=0.0, neginf=0.0)


def _class_scores(arr: np.ndarray) -> bool:
    """Per-sample shape [C] or [rows, C] with C > 1, float: looks like class scores."""
    return arr.dtype.kind == "f" and arr.ndim in (2, 3) and arr.shape[-1] > 1


def fidelity(
    reference: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per-output and overall fidelity of ``outputs`` to ``reference`` (both [n, ...])."""
    per_output: dict[str, dict[str, Any]] = {}
    accuracy = accuracy_original = None
    for name, ref in reference.items():
        out = outputs[name]
        if out.shape != ref.shape:
            raise EngineError(
                f"output '{name}' has shape {out.shape[1:]}, expected {ref.shape[1:]}"
            )
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        finite = bool(np.isfinite(out64).all())
        diff = np.abs(np.nan_to_num(out64, nan=np.inf) - ref64)
        norm = float(np.linalg.norm(ref64))
        entry: dict[str, Any] = {
            "cosine_min": round(float(_cosines(ref, out).min()), 6),
            "cosine_mean": round(float(_cosines(ref, out).mean()), 6),
            "max_abs_error": float(diff.max()) if diff.size else 0.0,
            "relative_l2_error": float(
                np.linalg.norm(np.nan_to_num(out64 - ref64, nan=np.inf)) / norm
            )
            if norm
            else 0.0,
            "finite": finite,
        }
        if _class_scores(ref):
            top_ref, top_out = ref.argmax(axis=-1), out.argmax(axis=-1)
            entry["top1_agreement"] = round(float((top_ref == top_out).mean()), 6)
            if (
                labels is not None
                and accuracy is None
                and top_ref.reshape(len(ref), -1).shape[1] == 1
            ):
                accuracy = round(float((top_out.reshape(-1) == labels).mean()), 6)
                accuracy_original = round(float((top_ref.reshape(-1) == labels).mean()), 6)
                entry["accuracy"] = accuracy
        per_output[name] = entry
    tops = [e["top1_agreement"] for e in per_output.values() if "top1_agreement" in e]
    return {
        "cosine_min": min(e["cosine_min"] for e in per_output.values()),
        "max_abs_error": max(e["max_abs_error"] for e in per_output.values()),
        "relative_l2_error": max(e["relative_l2_error"] for e in per_output.values()),
        "top1_agreement": min(tops) if tops else None,
        "accuracy": accuracy,
        "accuracy_original": accuracy_original,
        "samples": len(next(iter(reference.values()))),
        "outputs": per_output,
    }


def judge(
    fid: dict[str, Any],
    tolerance: Tolerance,
    cause: str = "compression",
    *,
    distilled: bool = False,
) -> str | None:
    """The reason a fidelity result is out of tolerance, or None when it is within.
    ``distilled`` selects the rule for distilled variants (see the module docstring)."""
    for name, entry in fid["outputs"].items():
        if not entry["finite"]:
            return f"output '{name}' contains NaN or infinity: outputs destroyed by {cause}"
    if distilled:
        return _judge_distilled(fid, tolerance, cause)
    worst_name, worst = min(fid["outputs"].items(), key=lambda kv: kv[1]["cosine_min"])
    if worst["cosine_min"] < tolerance.cosine_min:
        what = "outputs destroyed" if worst["cosine_min"] < 0.5 else "outputs drift too far"
        return (
            f"cosine {worst['cosine_min']:.3g} on output '{worst_name}' < "
            f"{tolerance.cosine_min:g}: {what} by {cause}"
        )
    for name, entry in fid["outputs"].items():
        top1 = entry.get("top1_agreement")
        if top1 is not None and top1 < tolerance.top1_min:
            return (
                f"top-1 agreement {top1:.3f} on output '{name}' < {tolerance.top1_min:g}: "
                f"{cause} changes {100 * (1 - top1):.1f}% of predictions"
            )
    if (
        tolerance.accuracy_drop_max is not None
        and fid.get("accuracy") is not None
        and fid["accuracy_original"] - fid["accuracy"] > tolerance.accuracy_drop_max
    ):
        return (
            f"accuracy drops from {fid['accuracy_original']:.3f} to {fid['accuracy']:.3f}, "
            f"more than the allowed {tolerance.accuracy_drop_max:g}"
        )
    return None


def _judge_distilled(fid: dict[str, Any], tolerance: Tolerance, cause: str) -> str | None:
    """Distilled variants: decisions for class scores, closeness in bulk for the rest."""
    why = "distilled variants are judged by top-1 agreement and accuracy, not logit cosine"
    for name, entry in fid["outputs"].items():
        top1 = entry.get("top1_agreement")
        if top1 is not None:
            if top1 < tolerance.distill_top1_min:
                return (
                    f"top-1 agreement {top1:.3f} on output '{name}' < "
                    f"{tolerance.distill_top1_min:g}: {cause} changes "
                    f"{100 * (1 - top1):.1f}% of predictions ({why})"
                )
            continue
        cos_mean = entry.get("cosine_mean", entry["cosine_min"])
        rel = entry["relative_l2_error"]
        if cos_mean < tolerance.cosine_min or rel > tolerance.distill_relative_error_max:
            return (
                f"output '{name}' (not class scores): mean cosine {cos_mean:.3g} "
                f"(needs >= {tolerance.cosine_min:g}) and relative L2 error {rel:.3g} (needs <= "
                f"{tolerance.distill_relative_error_max:g}): outputs drift too far by {cause}"
            )
    drop_max = tolerance.distill_accuracy_drop_max
    if (
        fid.get("accuracy") is not None
        and fid.get("accuracy_original") is not None
        and fid["accuracy_original"] - fid["accuracy"] > drop_max
    ):
        return (
            f"accuracy drops from {fid['accuracy_original']:.3f} to {fid['accuracy']:.3f}, "
            f"more than the allowed {drop_max:g} ({why})"
        )
    return None


def percentiles(samples_ms: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4)}


def first_sample(feeds: Feeds) -> dict[str, np.ndarray]:
    return sample_feed(feeds, 0)


def measure_latency(
    sessions: list, feed: dict[str, np.ndarray], settings: LatencySettings
) -> list[np.ndarray]:
    """Milliseconds per inference for each session, measured interleaved (A B, B A, ...) after a
    warm-up, so drift in CPU frequency or load hits every model alike."""
    timer = time.perf_counter_ns
    for session in sessions:
        for _ in range(max(1, settings.warmup)):
            session.run(None, feed)
    runs = settings.runs
    if runs is None:
        start = timer()
        for session in sessions:
            session.run(None, feed)
        per_round = max((timer() - start) / 1e9, 1e-6)
        runs = int(settings.budget_s / per_round)
        runs = max(settings.min_runs, min(settings.max_runs, runs))
    times = [np.empty(runs) for _ in sessions]
    order = list(range(len(sessions)))
    for r in range(runs):
        for idx in order if r % 2 == 0 else reversed(order):
            t0 = timer()
            sessions[idx].run(None, feed)
            times[idx][r] = (timer() - t0) / 1e6
    return times


def verify_variant(
    original: str | Path,
    variant: str | Path,
    *,
    evaluation: Feeds,
    labels: np.ndarray | None = None,
    reference: dict[str, np.ndarray] | None = None,
    original_size: int | None = None,
    original_gzip: int | None = None,
    tolerance: Tolerance | None = None,
    latency: LatencySettings | None = None,
    cause: str = "compression",
    distilled: bool = False,
) -> Verification:
    """Check, run, compare and time ``variant`` against ``original``; never raises for a bad
    variant (that is a ``failed`` or ``rejected`` result), only for a broken original.
    ``distilled`` applies the rule for distilled variants (top-1 agreement and accuracy instead
    of logit cosine); the rule used is recorded in ``fidelity['rule']`` and ``rule_text``."""
    tolerance = tolerance or Tolerance()
    latency = latency or LatencySettings()
    variant = Path(variant)
    result = Verification(status=FAILED)
    try:
        result.size_bytes = variant.stat().st_size
        result.gzip_bytes = gzip_size(variant)
        result.sha256 = sha256_file(variant)
        check_model(variant)
        model = onnx.load(str(variant), load_external_data=False)
        result.quantized_ops_share = quantized_ops_share(model)
        del model
        try:
            var_session = runtime_session(variant, threads=latency.threads)
        except Exception as exc:
            raise EngineError(f"onnxruntime cannot load the variant: {exc}") from exc
        orig_session = runtime_session(original, threads=latency.threads)
        if reference is None:
            reference = run_samples(orig_session, evaluation)
        try:
            outputs = run_samples(var_session, evaluation)
        except Exception as exc:
            raise EngineError(f"the variant fails to run on the held-out inputs: {exc}") from exc
        result.fidelity = fidelity(reference, outputs, labels)
    except Exception as exc:
        result.reason = str(exc)
        return result

    rule, rule_text = rule_for(distilled, result.fidelity)
    result.fidelity["rule"], result.fidelity["rule_text"] = rule, rule_text
    if distilled:
        result.notes.append(f"fidelity {rule_text}")
    problem = judge(result.fidelity, tolerance, cause, distilled=distilled)
    result.within_tolerance = problem is None
    if (
        problem is None
        and original_size is not None
        and result.size_bytes >= original_size
        and (original_gzip is None or result.gzip_bytes >= original_gzip)
    ):
        problem = (
            f"not smaller than the original ({result.size_bytes} bytes vs {original_size}, "
            f"gzip {result.gzip_bytes} vs {original_gzip})"
        )
    try:
        orig_ms, var_ms = measure_latency(
            [orig_session, var_session], first_sample(evaluation), latency
        )
    except Exception as exc:
        result.reason = f"latency measurement failed: {exc}"
        return result
    result.baseline_latency_ms = percentiles(orig_ms)
    result.latency_ms = percentiles(var_ms)
    ratio = float(np.median(var_ms / orig_ms))
    result.latency_ratio = round(ratio, 4)
    result.notes.append(
        f"latency measured over {len(var_ms)} interleaved runs, {latency.threads} thread(s)"
    )
    if problem is None and ratio > 1 + tolerance.latency_slack:
        problem = (
            f"slower than the original on this host: p50 {result.latency_ms['p50']:.3f} ms vs "
            f"{result.baseline_latency_ms['p50']:.3f} ms (median paired ratio {ratio:.2f})"
        )
    result.status = REJECTED if problem else ACCEPTED
    within = f"within tolerance ({rule_text})" if distilled else "within tolerance"
    result.reason = problem or f"{within}, smaller and not slower than the original"
    return result


def baseline_latency(path: str | Path, feeds: Feeds, settings: LatencySettings) -> dict[str, float]:
    """The original model's own latency percentiles (same method, measured alone)."""
    session = runtime_session(path, threads=settings.threads)
    (times,) = measure_latency([session], first_sample(feeds), settings)
    return percentiles(times)
