"""Distillation rows of the compression benchmark (issue 5): teacher vs student vs student+int8.

Usage:

    python bench/compression/distill.py [--models-dir /tmp/edgefleet-bench-models] [--only KEY ...]

For every teacher it runs ``compress(teacher, "distill")`` and ``compress(teacher,
"distill+int8-dynamic")`` on a real labelled dataset (same seed, so both train the same
student) and prints parameters, file size, p50 latency (paired and interleaved with the
teacher, 1 thread) and held-out accuracy / top-1 agreement with the teacher.

Teachers and data (nothing synthetic; a student trained on random noise learns nothing):
  * ``digits-mlp``, ``digits-cnn``: the test suite's digits teachers (tests/compression/engine/
    models.py), on all 1797 scikit-learn digits with their labels.
  * ``ppocr-cls``: rapidocr's text-direction classifier (0 / 180 degrees, 3x48x192 input, a
    model we did not build). Data: "text lines" of four real handwritten scikit-learn digits
    upscaled to 48x48, dark ink on light paper, half of them rotated by 180 degrees; the label
    is the true rotation, so accuracy is measured against ground truth, not against the
    teacher.
  * ``magika``: int32 byte input: the generated students take float inputs only, so the engine
    answers "not applicable" (an uploaded student with a Cast would be needed); the row shows
    that answer.
Results go to bench/out/distill.md and distill.json (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # noqa: E402
    DEFAULT_MODELS_DIR,
    MODELS,
    OUT_DIR,
    _magika_dataset,
    locate,
)

from compression.engine import compress  # noqa: E402

OPTIONS = {"threads": 1, "latency_budget_s": 1.5, "latency_warmup": 3}


def _digits_sets(work: Path) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    from tests.compression.engine import models

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    mlp, cnn = work / "digits-mlp.onnx", work / "digits-cnn.onnx"
    models.build_digits_mlp(path=mlp)
    models.build_digits_cnn(path=cnn)
    np.savez(work / "digits-mlp.npz", x=X[:, None, :], labels=y)
    np.savez(work / "digits-cnn.npz", x=X.reshape(-1, 1, 1, 8, 8), labels=y)
    return {"digits-mlp": mlp, "digits-cnn": cnn}


PILLOW_DIR = Path(tempfile.gettempdir()) / "edgefleet-bench-pillow"
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))


def _words() -> list[str]:
    """Real English words: the project's own docs."""
    text = " ".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    words = [w.strip("`*|#()[],.:;\"'") for w in text.split()]
    return [w for w in words if w.isascii() and w.isprintable() and 1 < len(w) < 16]


def _resize_norm(crop: np.ndarray) -> np.ndarray:
    """rapidocr's cls pre-processing: height 48, width min(192, ceil(48 * w / h)), (x/255 - 0.5)
    / 0.5, zero padding on the right up to 192. ``crop`` is [h, w, 3] uint8."""
    from PIL import Image

    h, w = crop.shape[:2]
    width = min(192, int(np.ceil(48 * w / h)))
    image = np.asarray(Image.fromarray(crop).resize((width, 48), Image.BILINEAR), np.float32)
    out = np.zeros((3, 48, 192), dtype=np.float32)
    out[:, :, :width] = (image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def text_lines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` text-line images [n, 1, 3, 48, 192] for ppocr-cls and their true rotation (0 or
    1 = 180 degrees). Lines of 1-4 real words (from docs/*.md) rendered with Pillow in one of
    the system's DejaVu/Liberation fonts, random size, ink and paper shade, cropped like a
    detector's box, every other one rotated by 180 degrees, then pre-processed as rapidocr
    does. Without Pillow (install it outside the project into /tmp/edgefleet-bench-pillow),
    lines of four real handwritten scikit-learn digits are used instead."""
    if PILLOW_DIR.is_dir():
        sys.path.insert(0, str(PILLOW_DIR))
    fonts = [f for d in FONT_DIRS if d.is_dir() for f in sorted(d.glob("*.ttf"))]
    fonts = [f for f in fonts if "Math" not in f.name]
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        Image = None
    if Image is None or not fonts:
        x, y = _digit_lines(n, seed)
        return x, y, "digit lines (Pillow or fonts missing)"
    rng = np.random.default_rng(seed)
    words = _words()
    images = np.empty((n, 1, 3, 48, 192), dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        text = " ".join(rng.choice(words, size=rng.integers(1, 5)))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(22, 40)))
        left, top, right, bottom = font.getbbox(text)
        pad = int(rng.integers(2, 8))
        paper = int(rng.integers(190, 256))
        ink = int(rng.integers(0, 90))
        canvas = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (paper,) * 3)
        ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=(ink,) * 3)
        crop = np.asarray(canvas)
        crop = np.clip(crop + rng.normal(0, 4, crop.shape), 0, 255).astype(np.uint8)
        if i % 2:
            crop, labels[i] = np.ascontiguousarray(crop[::-1, ::-1]), 1
        images[i, 0] = _resize_norm(crop)
    return images, labels, f"{n} rendered text lines ({len(fonts)} fonts), half rotated 180°"


def _digit_lines(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fallback: four real handwritten digits per line, upscaled to 48x48, dark on light."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits().images / 16.0
    images = np.empty((n, 1, 3, 48, 192), dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        chosen = digits[rng.integers(0, len(digits), size=4)]
        line = np.concatenate([np.kron(d, np.ones((6, 6))) for d in chosen], axis=1)
        pixel = np.clip(rng.uniform(0.85, 1.0) - line * 0.8, 0, 1) * 255
        if i % 2:
            pixel, labels[i] = pixel[::-1, ::-1], 1
        images[i, 0] = np.repeat(((pixel / 255.0 - 0.5) / 0.5)[None], 3, axis=0)
    return images, labels


def _run(key: str, teacher: Path, dataset: Path, params: dict, options: dict, out: Path) -> dict:
    rows = []
    started = time.monotonic()
    for recipe in ("distill", "distill+int8-dynamic"):
        chain_params = params if recipe == "distill" else {"distill": params}
        report = compress(
            teacher,
            recipe,
            params=chain_params,
            dataset=dataset,
            out_dir=out / key,
            options=options,
        ).to_dict()
        v = report["variants"][0]
        d = (v["extra"] or {}).get("distill", v["extra"] or {})
        fid = v["fidelity"] or {}
        if not rows:
            rows.append(
                {
                    "what": "teacher",
                    "params": d.get("teacher_params"),
                    "size_bytes": report["model"]["size_bytes"],
                    "p50_ms": (v.get("baseline_latency_ms") or report["baseline"]["latency_ms"])[
                        "p50"
                    ],
                    "accuracy": fid.get("accuracy_original", report["baseline"].get("accuracy")),
                    "top1_agreement": 1.0,
                    "status": "original",
                    "reason": "",
                }
            )
        rows.append(
            {
                "what": "student" if recipe == "distill" else "student + int8-dynamic",
                "params": d.get("student_params"),
                "size_bytes": v["size_bytes"],
                "p50_ms": (v["latency_ms"] or {}).get("p50"),
                "latency_ratio": v["latency_ratio"],
                "size_ratio": v["size_ratio"],
                "accuracy": fid.get("accuracy"),
                "top1_agreement": fid.get("top1_agreement"),
                "cosine_min": fid.get("cosine_min"),
                "status": v["status"],
                "reason": v["reason"],
                "student": d.get("student"),
                "epochs": d.get("epochs_run"),
                "training_s": d.get("training_seconds"),
                "train_rows": d.get("train_rows"),
                "heldout_rows": d.get("heldout_rows"),
            }
        )
        if v["status"] == "failed":
            break
    return {
        "model": key,
        "params": params,
        "dataset": report["dataset"],
        "rows": rows,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "| teacher | data | model | params | size | p50 ms | size x | latency x | accuracy | "
        "top-1 vs teacher | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for row in r["rows"]:
            acc = row.get("accuracy")
            status = row["status"]
            if status != "original" and status != "accepted":
                status += f": {row['reason'][:140]}".replace("|", "/")
            lines.append(
                f"| {r['model']} | {r['data']} | {row['what']} | {_fmt(row.get('params'), ',')} "
                f"| {_fmt(row.get('size_bytes') and row['size_bytes'] / 1e3, '.1f')} kB "
                f"| {_fmt(row.get('p50_ms'), '.3f')} | {_fmt(row.get('size_ratio'), '.1f')} "
                f"| {_fmt(row.get('latency_ratio'), '.2f')} "
                f"| {'–' if acc is None else f'{100 * acc:.1f} %'} "
                f"| {_fmt(row.get('top1_agreement'), '.3f')} | {status} |"
            )
    return f"Command: `{command}`\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    want = set(args.only or ["digits-mlp", "digits-cnn", "ppocr-cls", "magika"])
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-distill-") as tmp:
        work = Path(tmp)
        teachers = _digits_sets(work)
        plan = []
        if "digits-mlp" in want:
            plan.append(
                (
                    "digits-mlp",
                    teachers["digits-mlp"],
                    work / "digits-mlp.npz",
                    {"widths": [64], "seed": 0},
                    {},
                    "1797 digits, labels",
                )
            )
        if "digits-cnn" in want:
            plan.append(
                (
                    "digits-cnn",
                    teachers["digits-cnn"],
                    work / "digits-cnn.npz",
                    {"width_multiplier": 0.375, "seed": 0},
                    {},
                    "1797 digits, labels",
                )
            )
        bench = {m.key: m for m in MODELS}
        if "ppocr-cls" in want:
            path = locate(bench["ppocr-cls"], args.models_dir)
            if path is None:
                print("ppocr-cls: rapidocr-onnxruntime not installed (see README)", file=sys.stderr)
            else:
                x, y, what = text_lines(1600)
                np.savez(work / "ppocr-cls.npz", x=x, labels=y)
                plan.append(
                    (
                        "ppocr-cls",
                        path,
                        work / "ppocr-cls.npz",
                        {
                            "architecture": "cnn",
                            "width_multiplier": 0.5,
                            "epochs": 40,
                            "time_budget_s": 300,
                            "seed": 0,
                        },
                        {"evaluation_samples": 400},
                        what + ", true labels",
                    )
                )
        if "magika" in want:
            path = locate(bench["magika"], args.models_dir)
            if path is not None:
                _magika_dataset(work / "magika.npz")
                plan.append(
                    (
                        "magika",
                        path,
                        work / "magika.npz",
                        {"seed": 0},
                        {},
                        "(refused before training)",
                    )
                )
        for key, teacher, dataset, params, extra_options, data in plan:
            print(f"== {key}", flush=True)
            result = _run(key, teacher, dataset, params, {**OPTIONS, **extra_options}, work / "out")
            result["data"] = data
            results.append(result)
            for row in result["rows"]:
                print(
                    f"   {row['what']:<24} {json.dumps({k: row.get(k) for k in ('params', 'size_bytes', 'p50_ms', 'accuracy', 'top1_agreement', 'status')})}"
                    f" {row.get('reason', '')[:160]}",
                    flush=True,
                )
    command = "python bench/compression/distill.py" + (
        f" --only {' '.join(args.only)}" if args.only else ""
    )
    table = markdown(results, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill.md").write_text(table)
    (args.out / "distill.json").write_text(json.dumps(results, indent=2, default=str))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
