"""Benchmark the compression engine on real third-party ONNX models shipped inside pip wheels.

Usage (see README.md beside this file for the one-line install of the model packages):

    python bench/compression/run.py [--models-dir /tmp/edgefleet-bench-models] [--only NAME ...]

For every model it runs, in the same process and with the same measurement code:
  * the anchor: ``onnxruntime.quantization.quantize_dynamic`` with its defaults, as a naive
    user would call it, verified exactly like an engine variant;
  * ``compress(model, "auto")`` — the engine's whole grid (every recipe with auto=True), each
    variant verified (fidelity on held-out inputs, interleaved latency against the original);
  * the recipes auto does not run on their own (``prune-magnitude`` alone).
It prints one markdown table per run and writes it, with the raw JSON reports, to bench/out/.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from compression.engine import compress  # noqa: E402
from compression.engine.verify import (  # noqa: E402
    LatencySettings,
    Tolerance,
    gzip_size,
    verify_variant,
)

DEFAULT_MODELS_DIR = Path(
    os.environ.get("EDGEFLEET_BENCH_MODELS")
    or Path(tempfile.gettempdir()) / "edgefleet-bench-models"
)
OUT_DIR = REPO / "bench" / "out"
INSTALL = (
    "pip install --no-deps --target {dir} silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4 "
    "nudenet==3.4.2 ddddocr==1.6.1 magika==1.0.3"
)
# Engine settings for the bench: few samples and a short latency budget keep a full run
# (5 models x ~10 variants) under ~20 minutes on 2 cores.
OPTIONS = {
    "threads": 1,
    "calibration_samples": 24,
    "evaluation_samples": 16,
    "synthetic_samples": 56,
    "latency_budget_s": 1.0,
    "latency_warmup": 3,
}
EXTRA_RECIPES: list[tuple[str, dict]] = [("prune-magnitude", {"sparsity": 0.5})]


@dataclass
class BenchModel:
    """One real model: the pip package that ships it and how to feed it."""

    key: str
    package: str
    version: str
    path: str
    """Path of the .onnx file inside the installed package."""
    kind: str
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    dataset: str | None = None
    """Name of a dataset builder below, for inputs random data cannot stand in for."""


MODELS = [
    BenchModel(
        "ppocr-cls",
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "CNN (MobileNetV3: BN, depthwise, SE)",
        {"x": [1, 3, 48, 192]},
    ),
    BenchModel(
        "ppocr-rec",
        "rapidocr-onnxruntime",
        "1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "CNN + SVTR transformer blocks (MatMul, 6625-class head)",
        {"x": [1, 3, 48, 320]},
    ),
    BenchModel(
        "silero-vad",
        "silero-vad",
        "6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "control flow: 25 If nodes, Conv/LSTM weights inside the subgraphs",
        dataset="silero",
    ),
    BenchModel(
        "magika",
        "magika",
        "1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "int32 byte input, MatMul/Einsum dense layers + Conv",
        dataset="magika",
    ),
    BenchModel(
        "nudenet-320n",
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        "YOLOv8n detector (Conv/SiLU, Concat, Split)",
        {"images": [1, 3, 320, 320]},
    ),
    BenchModel(
        "ddddocr",
        "ddddocr",
        "1.6.1",
        "ddddocr/common.onnx",
        "CNN + LSTM + Gemm OCR",
        {"input1": [1, 1, 64, 160]},
    ),
]


def _silero_dataset(path: Path, n: int = 80) -> None:
    """512-sample chunks of noisy tones at 16 kHz, zero state, sr=16000 (the If conditions
    branch on it, so random integers would run a different graph than real use)."""
    rng = np.random.default_rng(0)
    t = np.arange(512) / 16000.0
    freq = rng.uniform(100, 2000, size=(n, 1))
    audio = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal((n, 512))
    np.savez(
        path,
        input=audio.astype(np.float32)[:, None, :],
        state=np.zeros((n, 2, 1, 128), dtype=np.float32),
        sr=np.full(n, 16000, dtype=np.int64),
    )


def _magika_dataset(path: Path, n: int = 80) -> None:
    """Byte values 0..255 with the model's padding token 256 at the tail, like real files."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 1, 2048), dtype=np.int32)
    for i in range(n):
        data[i, 0, rng.integers(512, 2048) :] = 256
    np.savez(path, bytes=data)


DATASETS = {"silero": _silero_dataset, "magika": _magika_dataset}


def locate(model: BenchModel, models_dir: Path) -> Path | None:
    """The model file from the package installed in ``models_dir`` (or in this environment)."""
    for search in ([str(models_dir)], None):
        try:
            dist = (
                next(iter(importlib.metadata.distributions(name=model.package, path=search)), None)
                if search
                else importlib.metadata.distribution(model.package)
            )
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is None:
            continue
        if dist.version != model.version:
            print(
                f"  note: {model.package} {dist.version} found, the table was made with {model.version}"
            )
        candidate = Path(dist.locate_file(model.path))
        if candidate.is_file():
            return candidate
    return None


def anchor(model_path: Path, report: dict, work: Path, options: dict) -> dict:
    """Naive ``quantize_dynamic`` with defaults, verified with the engine's own verifier on the
    same held-out inputs, so its row is comparable with the engine's."""
    from onnxruntime.quantization import quantize_dynamic

    row = {"recipe": "anchor: ort quantize_dynamic", "params": {}, "status": "failed"}
    out = work / "anchor.onnx"
    started = time.monotonic()
    try:
        quantize_dynamic(str(model_path), str(out))
    except Exception as exc:
        row["reason"] = f"quantize_dynamic failed: {type(exc).__name__}: {str(exc)[:160]}"
        return row
    evaluation = report["_evaluation"]
    tolerance = Tolerance(
        **{k: v for k, v in report["tolerance"].items() if k in Tolerance.__dataclass_fields__}
    )
    result = verify_variant(
        model_path,
        out,
        evaluation=evaluation,
        original_size=model_path.stat().st_size,
        original_gzip=gzip_size(model_path),
        tolerance=tolerance,
        latency=LatencySettings(
            threads=options["threads"],
            warmup=options["latency_warmup"],
            budget_s=options["latency_budget_s"],
        ),
    )
    row.update(
        status=result.status,
        reason=result.reason,
        size_ratio=round(model_path.stat().st_size / result.size_bytes, 3)
        if result.size_bytes
        else None,
        gzip_ratio=round(gzip_size(model_path) / result.gzip_bytes, 3)
        if result.gzip_bytes
        else None,
        latency_ratio=result.latency_ratio,
        fidelity=result.fidelity,
        elapsed_s=round(time.monotonic() - started, 2),
    )
    return row


def _evaluation_feeds(model_path: Path, dataset: Path | None, input_shapes: dict, options: dict):
    """The held-out inputs the engine uses, rebuilt with the same deterministic split."""
    from compression.engine.data import prepare_data
    from compression.engine.inspect import inspect_model

    info = inspect_model(model_path)
    data = prepare_data(
        info.inputs,
        dataset=dataset,
        input_shapes=input_shapes or None,
        calibration_samples=options["calibration_samples"],
        evaluation_samples=options["evaluation_samples"],
        synthetic_samples=options["synthetic_samples"],
        seed=0,
    )
    return data.evaluation


def bench_model(model: BenchModel, path: Path, work: Path) -> dict:
    # Paddle's -1 input dims are read as dynamic by the engine itself (inspect/preprocess), so
    # the file is benchmarked exactly as the package ships it.
    dataset = None
    if model.dataset:
        dataset = work / f"{model.key}.npz"
        DATASETS[model.dataset](dataset)
    out_dir = work / model.key
    log_lines: list[str] = []
    started = time.monotonic()
    auto = compress(
        path,
        "auto",
        dataset=dataset,
        input_shapes=model.input_shapes or None,
        out_dir=out_dir,
        options=OPTIONS,
        log=log_lines.append,
    ).to_dict()
    rows = list(auto["variants"])
    for recipe, params in EXTRA_RECIPES:
        single = compress(
            path,
            recipe,
            params=params,
            dataset=dataset,
            input_shapes=model.input_shapes or None,
            out_dir=out_dir,
            options=OPTIONS,
        ).to_dict()
        rows.extend(single["variants"])
    auto["_evaluation"] = _evaluation_feeds(path, dataset, model.input_shapes, OPTIONS)
    rows.insert(0, anchor(path, auto, work, OPTIONS))
    auto.pop("_evaluation")
    recommended = auto["recommended"]
    return {
        "model": model.key,
        "package": f"{model.package}=={model.version}",
        "file": model.path,
        "kind": model.kind,
        "size_bytes": path.stat().st_size,
        "baseline_p50_ms": auto["baseline"]["latency_ms"]["p50"],
        "synthetic_inputs": auto["synthetic"],
        "rows": rows,
        "auto": (
            _recommended_text(auto["variants"][recommended])
            if recommended is not None
            else f"none — {auto['reason'][:300]}"
        ),
        "auto_reason": auto["reason"],
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _recommended_text(row: dict) -> str:
    return (
        f"{row['recipe']} `{_short_params(row)}` (size x{_fmt(row.get('size_ratio'), '.2f')}, "
        f"latency x{_fmt(row.get('latency_ratio'), '.2f')}, "
        f"cosine min {_fmt((row.get('fidelity') or {}).get('cosine_min'), '.4f')})"
    )


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _short_params(row: dict) -> str:
    """Only the parameters that differ from the recipe's defaults (per step for a chain)."""
    from compression.engine.recipes import REGISTRY, defaults

    params = row.get("params") or {}
    steps = row["recipe"].split("+")

    def differing(step: str, values: dict) -> dict:
        if step not in REGISTRY:
            return values
        known = defaults(step)
        return {k: v for k, v in values.items() if known.get(k, object()) != v}

    if len(steps) > 1:
        shown = {s: differing(s, params.get(s) or {}) for s in steps}
        shown = {s: p for s, p in shown.items() if p}
    else:
        shown = differing(steps[0], params)
    return json.dumps(shown, separators=(",", ":")) if shown else "defaults"


def _reason(row: dict) -> str:
    text = (row.get("reason") or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= 110 else text[:107] + "..."


def markdown(results: list[dict], command: str, seconds: float) -> str:
    lines = [
        "# Compression benchmark",
        "",
        f"Command: `{command}` — {seconds / 60:.1f} min on this host, 1 inference thread.",
        "size x = original / variant bytes (higher is smaller), gzip x the same for "
        "gzip-compressed files; latency = variant / original "
        "p50, median of interleaved paired runs (lower is faster); cosine = worst held-out "
        "sample; top-1 = argmax agreement with the original where the output is a score vector.",
        "",
    ]
    for result in results:
        lines += [
            f"## {result['model']} — `{result['package']}` `{result['file']}`",
            "",
            f"{result['kind']}; {result['size_bytes'] / 1e6:.1f} MB; baseline p50 "
            f"{_fmt(result['baseline_p50_ms'], '.2f')} ms; inputs: "
            f"{'synthetic' if result['synthetic_inputs'] else 'generated dataset'}; "
            f"bench time {result['elapsed_s']:.0f} s.",
            "",
            f"**auto recommends:** {result['auto']}",
            "",
            "| recipe | params | status | size x | gzip x | latency | cosine min | top-1 | reason |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["rows"]:
            fid = row.get("fidelity") or {}
            params = _short_params(row)
            lines.append(
                f"| {row['recipe']} | `{params}` | {row['status']} "
                f"| {_fmt(row.get('size_ratio'), '.2f')} | {_fmt(row.get('gzip_ratio'), '.2f')} "
                f"| {_fmt(row.get('latency_ratio'), '.2f')} "
                f"| {_fmt(fid.get('cosine_min'), '.4f')} | {_fmt(fid.get('top1_agreement'), '.3f')} "
                f"| {_reason(row)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--only", nargs="*", help="model keys: " + ", ".join(m.key for m in MODELS))
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    # onnxruntime's quantizers log advice to the root logger for every tensor: keep the
    # bench output to results.
    logging.getLogger().setLevel(logging.ERROR)

    chosen = [m for m in MODELS if not args.only or m.key in args.only]
    located, missing = [], []
    for model in chosen:
        path = locate(model, args.models_dir)
        (located.append((model, path)) if path else missing.append(model))
    if missing:
        names = sorted({f"{m.package}=={m.version}" for m in missing})
        print(
            f"missing model packages: {', '.join(names)} (looked in {args.models_dir} and this "
            f"environment). Install them outside the project with:\n  "
            + INSTALL.format(dir=args.models_dir),
            file=sys.stderr,
        )
        if not located:
            return 2

    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        for model, path in located:
            print(f"== {model.key}: {path}", flush=True)
            try:
                result = bench_model(model, path, Path(tmp))
            except Exception as exc:  # one model's engine error must not lose the others
                print(f"   engine error: {type(exc).__name__}: {exc}", flush=True)
                result = {
                    "model": model.key,
                    "package": f"{model.package}=={model.version}",
                    "file": model.path,
                    "kind": model.kind,
                    "size_bytes": path.stat().st_size,
                    "baseline_p50_ms": None,
                    "synthetic_inputs": not model.dataset,
                    "rows": [],
                    "auto": f"engine error: {type(exc).__name__}: {str(exc)[:200]}",
                    "elapsed_s": 0.0,
                }
            results.append(result)
            for row in result["rows"]:
                print(
                    f"   {row['recipe']:<30} {row['status']:<9} size x{_fmt(row.get('size_ratio'), '.2f')}"
                    f" latency {_fmt(row.get('latency_ratio'), '.2f')} "
                    f"cos {_fmt((row.get('fidelity') or {}).get('cosine_min'), '.4f')} "
                    f"({_fmt(row.get('elapsed_s'), '.0f')} s)  {_reason(row)[:80]}",
                    flush=True,
                )
            print(f"   auto recommends: {result['auto']} ({result['elapsed_s']} s)", flush=True)
    command = "python bench/compression/run.py" + (
        f" --only {' '.join(args.only)}" if args.only else ""
    )
    table = markdown(results, command, time.monotonic() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression.md").write_text(table)
    (args.out / "compression.json").write_text(json.dumps(results, indent=2, default=str))
    print()
    print(table)
    print(f"written: {args.out / 'compression.md'} and compression.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
