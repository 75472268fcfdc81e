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
    (smaller), latency p50 (lower) and fidelity cosine_min (higher)."""
    points = [
        (i, v.size_bytes, v.latency_ms["p50"], v.fidelity.get("cosine_min", 0.0))
        for i, v in enumerate(variants)
        if v.accepted and v.size_bytes is not None and v.latency_ms
    ]
    front = []
    for i, size, lat, cos in points:
        dominated = any(
            s <= size and t <= lat and c >= cos and (s < size or t < lat or c > cos)
            for j, s, t, c in points
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


TIE = 0.01


def recommend(variants: list[VariantReport], constraints: dict[str, Any]) -> tuple[int | None, str]:
    """The rule: among accepted variants (within tolerance, smaller and not slower than the
    original on this host) that meet the constraints, pick the smallest file; sizes within 1%
    of the smallest count as a tie, broken by the lower p50 latency, then the higher cosine."""
    max_size = constraints.get("max_size_bytes")
    max_latency = constraints.get("max_latency_ms")
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
    eligible = [
        i
        for i in accepted
        if (max_size is None or variants[i].size_bytes <= max_size)
        and (max_latency is None or variants[i].latency_ms["p50"] <= max_latency)
    ]
    if not eligible:
        smallest = min(accepted, key=lambda i: variants[i].size_bytes)
        fastest = min(accepted, key=lambda i: variants[i].latency_ms["p50"])
        limits = []
        if max_size is not None:
            limits.append(
                f"max size {max_size} bytes (smallest accepted: {variants[smallest].size_bytes})"
            )
        if max_latency is not None:
            limits.append(
                f"max latency {max_latency} ms (fastest accepted p50: "
                f"{variants[fastest].latency_ms['p50']:.3f} ms)"
            )
        return None, f"{len(accepted)} variant(s) accepted, but none meets {' and '.join(limits)}"
    smallest = min(variants[i].size_bytes for i in eligible)
    tied = [i for i in eligible if variants[i].size_bytes <= smallest * (1 + TIE)]
    best = min(
        tied,
        key=lambda i: (variants[i].latency_ms["p50"], -variants[i].fidelity.get("cosine_min", 0.0)),
    )
    v = variants[best]
    return best, (
        f"{v.recipe}: the smallest accepted variant ({v.size_bytes} bytes, "
        f"{v.size_ratio or 0:.1f}x smaller; p50 {v.latency_ms['p50']:.3f} ms, "
        f"cosine {v.fidelity.get('cosine_min', 0):.4f})"
    )
