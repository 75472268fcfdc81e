"""``compress MODEL.onnx --recipe NAME ...``: the engine from a shell.

Progress goes to stderr; stdout gets a table of variants, or with ``--json`` the JSON document
alone (DESIGN.md). Exit status: 0 when a variant is recommended, 1 when none qualifies, 2 on a
usage or input error (bad model, dataset, recipe or option), 130 when interrupted.
The Django ``compress`` management command calls ``main(argv)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from compression.engine.base import EngineError
from compression.engine.recipes import REGISTRY


class _Bar:
    """A one-line \\r progress bar on a terminal; plain lines otherwise (logs, CI)."""

    def __init__(self, stream: TextIO, quiet: bool = False):
        self.stream, self.quiet = stream, quiet
        self.tty = stream.isatty()
        self.last_message = ""
        self.start = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            filled = int(fraction * 30)
            line = (
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {message[:60]:<60}"
            )
            self.stream.write(line)
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        elif message != self.last_message:
            elapsed = time.monotonic() - self.start
            self.stream.write(f"[{fraction * 100:5.1f}% {elapsed:6.1f}s] {message}\n")
            self.stream.flush()
        self.last_message = message


def _shape_arg(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        shape = []
    if not sep or not name or not shape:
        raise argparse.ArgumentTypeError(
            f"expected NAME=D1,D2,... (e.g. x=1,3,224,224), got {text!r}"
        )
    return name, shape


def _param_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<17} {spec.summary}" for name, spec in REGISTRY.items())
    parser = argparse.ArgumentParser(
        prog="compress",
        description="Compress an ONNX model and verify every variant against the original.",
        epilog=f"recipes (chain with '+', e.g. prune-magnitude+int8-dynamic):\n{recipes}\n"
        "  auto              try a bounded grid and recommend the smallest accepted variant",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="the ONNX model file")
    parser.add_argument("--recipe", required=True, help="recipe name, chain a+b, or auto")
    parser.add_argument("--dataset", help=".npz with one array per input (+ optional labels)")
    parser.add_argument(
        "--input-shape",
        action="append",
        type=_shape_arg,
        default=[],
        metavar="NAME=D1,D2,...",
        help="concrete shape of an input with dynamic dims (synthetic inputs); repeatable",
    )
    parser.add_argument(
        "--out", default="compressed", help="output directory (default: ./compressed)"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON report on stdout")
    parser.add_argument(
        "--param",
        action="append",
        type=_param_arg,
        default=[],
        metavar="KEY=VALUE",
        help="recipe parameter (JSON values allowed, e.g. per_channel=true); repeatable",
    )
    parser.add_argument(
        "--tolerance-cosine", type=float, help="minimum cosine per output (default 0.99)"
    )
    parser.add_argument(
        "--tolerance-top1", type=float, help="minimum top-1 agreement (default 0.99)"
    )
    parser.add_argument(
        "--max-size", type=int, metavar="BYTES", help="recommend only variants this small"
    )
    parser.add_argument(
        "--max-latency-ms", type=float, help="recommend only variants this fast (p50)"
    )
    parser.add_argument(
        "--size-metric",
        choices=["raw", "gzip"],
        help="what 'smaller' means for the recommendation: raw file bytes as the device "
        "stores them (default) or the gzip-compressed download",
    )
    parser.add_argument(
        "--include-distill",
        action="store_true",
        help="let auto also train distilled students (slow; needs PyTorch and a dataset)",
    )
    parser.add_argument("--threads", type=int, help="intra-op threads for measurements (default 1)")
    parser.add_argument(
        "--latency-runs", type=int, help="measured runs per model (default: ~2 s worth)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _fmt(value, spec: str = "", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def render_table(doc: dict) -> str:
    """A readable summary of the JSON document."""
    model = doc["model"]
    base = doc["baseline"]["latency_ms"]
    lines = [
        f"model    {model['path']}  {model['size_bytes']} bytes  sha256 {model['sha256'][:12]}",
        f"baseline p50 {base['p50']:.3f} ms  p90 {base['p90']:.3f} ms  p99 {base['p99']:.3f} ms"
        + ("  (synthetic inputs)" if doc.get("synthetic") else ""),
        "",
    ]
    header = f"{'#':>2} {'recipe':<30} {'status':<9} {'size':>10} {'x smaller':>9} {'p50 ms':>8} {'cosine':>7} {'top1':>6} {'acc':>6}  reason"
    lines += [header, "-" * len(header)]
    for i, v in enumerate(doc["variants"]):
        params = ",".join(
            f"{k}={val}"
            for k, val in (v.get("requested_params") or {}).items()
            if not isinstance(val, dict | list)
        )
        label = v["recipe"] + (f" ({params})" if params and len(params) < 40 else "")
        fid = v["fidelity"]
        mark = "*" if doc["recommended"] == i else ("p" if v.get("pareto") else " ")
        lines.append(
            f"{i:>2}{mark}{label[:30]:<30} {v['status']:<9} {_fmt(v['size_bytes']):>10} "
            f"{_fmt(v.get('size_ratio'), '.2f'):>9} {_fmt((v['latency_ms'] or {}).get('p50'), '.3f'):>8} "
            f"{_fmt(fid.get('cosine_min'), '.4f'):>7} {_fmt(fid.get('top1_agreement'), '.3f'):>6} "
            f"{_fmt(fid.get('accuracy'), '.3f'):>6}  {v['reason']}"
        )
    lines.append("")
    if doc["recommended"] is None:
        lines.append(f"no recommendation: {doc['reason']}")
    else:
        v = doc["variants"][doc["recommended"]]
        lines.append(f"recommended #{doc['recommended']} (* above): {doc['reason']}")
        lines.append(f"artifact: {v['path']}")
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(
    argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    from compression.engine.pipeline import compress

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    options: dict = {}
    for key, arg in (
        ("cosine_min", args.tolerance_cosine),
        ("top1_min", args.tolerance_top1),
        ("threads", args.threads),
        ("latency_runs", args.latency_runs),
    ):
        if arg is not None:
            options[key] = arg
    if args.include_distill:
        options["include_distill"] = True
    bar = _Bar(stderr, quiet=args.quiet)
    try:
        report = compress(
            args.model,
            args.recipe,
            dataset=args.dataset,
            input_shapes=dict(args.input_shape) or None,
            out_dir=args.out,
            options=options,
            constraints={
                "max_size_bytes": args.max_size,
                "max_latency_ms": args.max_latency_ms,
                "size_metric": args.size_metric,
            },
            params=dict(args.param) or None,
            progress=bar,
            log=(lambda message: None),
        )
    except KeyboardInterrupt:
        stderr.write("\ninterrupted\n")
        return 130
    except EngineError as exc:
        stderr.write(f"\nerror: {exc}\n")
        return 2
    if args.json:
        stdout.write(report.to_json() + "\n")
    else:
        stdout.write(render_table(report.to_dict()) + "\n")
    stdout.flush()
    return 0 if report.recommended is not None else 1
