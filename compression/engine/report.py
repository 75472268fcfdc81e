"""The engine's result: ``CompressionReport`` and its JSON document (``compress --json``).

The document's required keys are a public contract (DESIGN.md):
``{"model": {"path", "sha256", "size_bytes"}, "baseline": {"latency_ms": {"p50", "p90", "p99"}},
"variants": [{"recipe", "params", "status", "reason", "path", "size_bytes", "gzip_bytes",
"sha256", "latency_ms", "fidelity": {"cosine_min", "max_abs_error", "top1_agreement",
"accuracy", ...}}], "recommended": index or null}``. Everything else is an extension.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compression.engine.verify import RULE_DECISIONS

REPORT_VERSION = 1


@dataclass
class VariantReport:
    """One evaluated variant: what was tried, what came out, and the verdict."""

    recipe: str
    params: dict[str, Any]
    status: str
    """'accepted', 'rejected' or 'failed'."""
    reason: str
    path: str | None = None
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    sha256: str | None = None
    latency_ms: dict[str, float] | None = None
    fidelity: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    requested_params: dict[str, Any] = field(default_factory=dict)
    """The parameters asked for (``params`` holds them all, defaults filled in)."""
    baseline_latency_ms: dict[str, float] | None = None
    latency_ratio: float | None = None
    size_ratio: float | None = None
    """Original size / variant size (3.0 = three times smaller)."""
    gzip_ratio: float | None = None
    quantized_ops_share: float | None = None
    pareto: bool = False
    not_applicable: bool = False
    elapsed_s: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def fidelity_score(self) -> float:
        """The fidelity figure the variant was judged by (higher is closer), used to rank it.

        Under the default ``outputs`` rule: the worst per-sample cosine over all outputs.
        Under the ``decisions`` rule (distilled variants), logit cosine is meaningless (a KL
        loss ignores a per-sample shift of the logits), so: the lowest top-1 agreement over the
        class-score outputs, and the lowest mean cosine over any other output."""
        fid = self.fidelity or {}
        if fid.get("rule") == RULE_DECISIONS:
            figures = [
                e["top1_agreement"] if "top1_agreement" in e else e.get("cosine_mean", 0.0)
                for e in (fid.get("outputs") or {}).values()
            ]
            figures = [f for f in figures if f is not None]
            if figures:
                return float(min(figures))
        value = fid.get("cosine_min")
        return float(value) if value is not None else 0.0

    @property
    def fidelity_score_name(self) -> str:
        if (self.fidelity or {}).get("rule") == RULE_DECISIONS:
            return "top-1 agreement"
        return "cosine"

    def to_dict(self) -> dict[str, Any]:
        fid = dict(self.fidelity)
        for key in ("cosine_min", "max_abs_error", "top1_agreement", "accuracy"):
            fid.setdefault(key, None)
        return {
            "recipe": self.recipe,
            "params": self.params,
            "status": self.status,
            "reason": self.reason,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "gzip_bytes": self.gzip_bytes,
            "sha256": self.sha256,
            "latency_ms": self.latency_ms,
            "fidelity": fid,
            "summary": self.summary,
            "requested_params": self.requested_params,
            "baseline_latency_ms": self.baseline_latency_ms,
            "latency_ratio": self.latency_ratio,
            "size_ratio": self.size_ratio,
            "gzip_ratio": self.gzip_ratio,
            "quantized_ops_share": self.quantized_ops_share,
            "pareto": self.pareto,
            "fidelity_score": self.fidelity_score if self.fidelity else None,
            "not_applicable": self.not_applicable,
            "elapsed_s": self.elapsed_s,
            "notes": self.notes,
            "extra": self.extra,
        }


@dataclass
class CompressionReport:
    """Everything ``compress`` found out; ``to_json()`` is the ``compress --json`` document."""

    model: dict[str, Any]
    """path, sha256, size_bytes, plus the inspection (opset, inputs, op histogram, ...)."""
    baseline: dict[str, Any]
    variants: list[VariantReport]
    recommended: int | None
    reason: str
    """Why ``recommended`` was chosen, or why nothing was."""
    recipe: str = ""
    dataset: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float | None = None

    @property
    def recommended_variant(self) -> VariantReport | None:
        return None if self.recommended is None else self.variants[self.recommended]

    def to_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "version": REPORT_VERSION,
                "model": self.model,
                "baseline": self.baseline,
                "variants": [v.to_dict() for v in self.variants],
                "recommended": self.recommended,
                "reason": self.reason,
                "recipe": self.recipe,
                "dataset": self.dataset,
                "synthetic": bool(self.dataset.get("synthetic", False)),
                "tolerance": self.tolerance,
                "constraints": self.constraints,
                "lineage": self.lineage,
                "notes": self.notes,
                "elapsed_s": self.elapsed_s,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    """numpy scalars, paths and non-finite floats turned into JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def pareto_front(variants: list[VariantReport]) -> list[int]:
    """Indices of accepted variants no other accepted variant beats on every axis: size
    (smaller), latency p50 (lower) and fidelity (higher). Fidelity is each variant's
    ``fidelity_score``: the figure its own rule judged it by (worst cosine, or top-1 agreement
    for distilled variants, whose logit cosine says nothing)."""
    points = [
        (i, v.size_bytes, v.latency_ms["p50"], v.fidelity_score)
        for i, v in enumerate(variants)
        if v.accepted and v.size_bytes is not None and v.latency_ms
    ]
    front = []
    for i, size, lat, fid in points:
        dominated = any(
            s <= size and t <= lat and f >= fid and (s < size or t < lat or f > fid)
            for j, s, t, f in points
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


TIE = 0.01
SIZE_METRICS = ("raw", "gzip")
"""``constraints["size_metric"]``: what "smaller" means for the recommendation. ``raw`` (the
default) is the file as the device stores and loads it; ``gzip`` is the compressed transfer
size, for fleets where the download, not the disk, is the limit."""


def _really_smaller(
    v: VariantReport, metric: str, original_size: int | None, original_gzip: int | None
) -> bool:
    """Smaller than the original by the chosen metric: raw bytes on disk unless asked for gzip.

    Verification accepts a variant that is smaller raw *or* gzip-compressed (magnitude pruning
    keeps every tensor dense: same file size, better compression). Such a variant saves
    nothing on a device's disk, so it is never recommended unless the job says the transfer
    size is what matters (``size_metric="gzip"``)."""
    if metric == "gzip":
        if original_gzip is not None and v.gzip_bytes is not None:
            return v.gzip_bytes < original_gzip
        return v.gzip_ratio is None or v.gzip_ratio > 1
    if original_size is not None and v.size_bytes is not None:
        return v.size_bytes < original_size
    return v.size_ratio is None or v.size_ratio > 1


def recommend(
    variants: list[VariantReport],
    constraints: dict[str, Any],
    *,
    original_size: int | None = None,
    original_gzip: int | None = None,
) -> tuple[int | None, str]:
    """The rule: among accepted variants (within tolerance, smaller and not slower than the
    original on this host) that are really smaller by the constraint's ``size_metric`` (raw
    file bytes by default, see ``_really_smaller``) and meet the constraints, pick the smallest
    file; sizes within 1% of the smallest count as a tie, broken by the lower p50 latency, then
    the higher ``fidelity_score``."""
    max_size = constraints.get("max_size_bytes")
    max_latency = constraints.get("max_latency_ms")
    metric = constraints.get("size_metric") or "raw"

    def size(i: int) -> int:
        v = variants[i]
        return v.gzip_bytes if metric == "gzip" else v.size_bytes

    accepted = [i for i, v in enumerate(variants) if v.accepted]
    if not accepted:
        if not variants:
            return None, "no variant was produced"
        causes: dict[str, int] = {}
        for v in variants:
            cause = v.reason.split(":", 1)[0] if v.status == "rejected" else v.status
            cause = (
                "outputs out of tolerance"
                if cause.startswith(("cosine", "top-1", "output "))
                else cause
            )
            causes[cause] = causes.get(cause, 0) + 1
        why = ", ".join(f"{n} {cause}" for cause, n in causes.items())
        return None, (
            "no variant is within tolerance, smaller and not slower than the original on this "
            f"host ({why}; see each variant's reason)"
        )
    smaller = [
        i for i in accepted if _really_smaller(variants[i], metric, original_size, original_gzip)
    ]
    if not smaller:
        if metric == "raw":
            return None, (
                f"{len(accepted)} variant(s) accepted, but none is smaller on disk than the "
                "original (only their gzip-compressed size shrinks, e.g. magnitude pruning "
                "keeps tensors dense); a device stores the raw file. Set the constraint "
                "size_metric='gzip' if the compressed transfer size is what matters"
            )
        return None, f"{len(accepted)} variant(s) accepted, but none is smaller gzip-compressed"
    eligible = [
        i
        for i in smaller
        if (max_size is None or size(i) <= max_size)
        and (max_latency is None or variants[i].latency_ms["p50"] <= max_latency)
    ]
    what = "gzip bytes" if metric == "gzip" else "bytes"
    if not eligible:
        smallest = min(smaller, key=size)
        fastest = min(smaller, key=lambda i: variants[i].latency_ms["p50"])
        limits = []
        if max_size is not None:
            limits.append(f"max size {max_size} {what} (smallest accepted: {size(smallest)})")
        if max_latency is not None:
            limits.append(
                f"max latency {max_latency} ms (fastest accepted p50: "
                f"{variants[fastest].latency_ms['p50']:.3f} ms)"
            )
        return None, f"{len(accepted)} variant(s) accepted, but none meets {' and '.join(limits)}"
    smallest = min(size(i) for i in eligible)
    tied = [i for i in eligible if size(i) <= smallest * (1 + TIE)]
    best = min(
        tied,
        key=lambda i: (variants[i].latency_ms["p50"], -variants[i].fidelity_score),
    )
    v = variants[best]
    ratio = v.gzip_ratio if metric == "gzip" else v.size_ratio
    skipped = len(accepted) - len(smaller)
    tail = (
        f"; {skipped} accepted variant(s) not considered: not smaller on disk (only gzip)"
        if skipped and metric == "raw"
        else ""
    )
    return best, (
        f"{v.recipe}: the smallest accepted variant ({size(best)} {what}, "
        f"{ratio or 0:.1f}x smaller; p50 {v.latency_ms['p50']:.3f} ms, "
        f"{v.fidelity_score_name} {v.fidelity_score:.4f}){tail}"
    )
