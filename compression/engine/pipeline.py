"""``compress``: inspect, prepare data, pre-process, run recipes, verify, write artifacts.

Artifacts: every recipe writes inside a private work directory under ``out_dir``
(``.work-<host>-<pid>-*``, removed at the end, even after an exception or a cancellation; after
a SIGKILL, the next run on the same host removes it once that pid is gone). An accepted variant
is then moved with ``os.replace`` to ``out_dir/<sha256>.onnx`` (same filesystem, so the move is
atomic: readers never see a half-written artifact). A rejected variant whose fidelity was
within tolerance (rejected for speed or size on this host) is kept as
``out_dir/rejected-<sha256>.onnx`` for inspection; other rejected or failed variants are not
kept unless ``keep_rejected`` is set.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import onnx

from compression.engine.auto import candidates
from compression.engine.base import (
    Cancelled,
    EngineError,
    MissingDependency,
    RecipeContext,
    RecipeNotApplicable,
)
from compression.engine.data import prepare_data
from compression.engine.host import lineage
from compression.engine.inspect import inspect_model, iter_graphs, runtime_session
from compression.engine.preprocess import preprocess, sort_topologically
from compression.engine.recipes import (
    AUTO,
    DISTILL,
    REGISTRY,
    explain,
    parse_chain,
    resolve,
    split_chain_params,
)
from compression.engine.report import (
    SIZE_METRICS,
    CompressionReport,
    VariantReport,
    pareto_front,
    recommend,
)
from compression.engine.verify import (
    ACCEPTED,
    FAILED,
    REJECTED,
    LatencySettings,
    Tolerance,
    baseline_latency,
    gzip_size,
    run_samples,
    verify_variant,
)


@dataclass
class EngineOptions:
    """Engine settings (``options=`` of ``compress``); unknown keys are refused."""

    threads: int = 1
    latency_runs: int | None = None
    latency_budget_s: float = 2.0
    latency_warmup: int = 5
    cosine_min: float = 0.99
    top1_min: float = 0.99
    accuracy_drop_max: float | None = None
    latency_slack: float = 0.05
    distill_top1_min: float = 0.97
    """Distilled variants: minimum top-1 agreement (replaces cosine for class scores)."""
    distill_relative_error_max: float = 0.1
    """Distilled variants: maximum relative L2 error on outputs that are not class scores."""
    calibration_samples: int = 128
    evaluation_samples: int = 500
    synthetic_samples: int = 64
    keep_rejected: bool = False
    seed: int = 0
    auto_recipes: list[str] | None = None
    """Restrict ``auto`` to these grid entries (recipe or chain names)."""
    include_distill: bool = False
    """Let ``auto`` also try ``distill`` and ``distill+int8-dynamic`` (slow: it trains a
    student). Never on by default; naming a distill entry in ``auto_recipes`` also asks."""

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> EngineOptions:
        options = dict(options or {})
        tolerance = options.pop("tolerance", None) or {}
        options.update(tolerance)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EngineError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
        opts = cls(**options)
        if not all(
            0.0 <= value <= 1.0 for value in (opts.cosine_min, opts.top1_min, opts.distill_top1_min)
        ):
            raise EngineError(
                "tolerances cosine_min, top1_min and distill_top1_min must be between 0 and 1"
            )
        if opts.accuracy_drop_max is not None and not 0.0 <= opts.accuracy_drop_max <= 1.0:
            raise EngineError("tolerance accuracy_drop_max must be between 0 and 1")
        if opts.distill_relative_error_max < 0:
            raise EngineError("tolerance distill_relative_error_max must not be negative")
        if opts.threads < 1:
            raise EngineError("threads must be at least 1")
        return opts

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(
            self.cosine_min,
            self.top1_min,
            self.accuracy_drop_max,
            self.latency_slack,
            self.distill_top1_min,
            self.distill_relative_error_max,
        )

    @property
    def latency(self) -> LatencySettings:
        return LatencySettings(
            threads=self.threads,
            warmup=self.latency_warmup,
            runs=self.latency_runs,
            budget_s=self.latency_budget_s,
        )


CONSTRAINTS = ("max_size_bytes", "max_latency_ms", "size_metric")


def _check_constraints(constraints: dict[str, Any] | None) -> dict[str, Any]:
    constraints = {k: v for k, v in (constraints or {}).items() if v is not None}
    unknown = sorted(set(constraints) - set(CONSTRAINTS))
    if unknown:
        raise EngineError(f"unknown constraint(s) {unknown}; known: {list(CONSTRAINTS)}")
    metric = constraints.get("size_metric")
    if metric is not None and metric not in SIZE_METRICS:
        raise EngineError(
            f"constraint size_metric must be one of {list(SIZE_METRICS)} ('raw': the file on "
            f"the device's disk, the default; 'gzip': the compressed download), got {metric!r}"
        )
    return constraints


def _cause(recipe: str) -> str:
    if "prune" in recipe and not any(s in recipe for s in ("int8", "int4", "fp16")):
        return "pruning"
    if "distill" in recipe:
        return "distillation"
    return "quantization"


def _without_value_info(path: Path, dst: Path) -> Path:
    """``path`` itself when it holds no intermediate shape annotations (``value_info``), else a
    copy without them at ``dst``.

    Pre-processing annotates every intermediate tensor with its inferred shape, which the
    quantizers rely on. A recipe that changes tensor shapes (``prune-structured`` removes
    channels) would contradict those annotations, and onnxruntime refuses a graph whose
    annotations disagree with its weights ("Dimension mismatch in unification between 192 and
    256"). Such recipes get the graph without them and re-infer shapes on their result."""
    model = onnx.load(str(path))
    if not any(len(g.value_info) for g in iter_graphs(model.graph)):
        return path
    for graph in iter_graphs(model.graph):
        del graph.value_info[:]
    onnx.save(model, str(dst))
    return dst


class _LogStream(io.TextIOBase):
    """A text stream that forwards whole lines to the ``log`` callback."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.buffer = log, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.log(line)
        return len(text)


class _Run:
    """State shared by the variants of one ``compress`` call."""

    def __init__(
        self, *, original, source, data, info, work, out_dir, opts, log, progress, cancelled
    ):
        self.original, self.source, self.data, self.info = original, source, data, info
        self.work, self.out_dir, self.opts = work, out_dir, opts
        self.log, self.progress, self.cancelled = log, progress, cancelled
        self.gzip_original = gzip_size(original)
        try:
            self.reference = run_samples(
                runtime_session(original, threads=max(opts.threads, 1)), data.evaluation
            )
        except Exception as exc:
            where = (
                "the synthesized inputs (give a dataset with valid values)"
                if data.synthetic
                else "the dataset's held-out samples"
            )
            raise EngineError(f"the original model fails to run on {where}: {exc}") from exc

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled("compression cancelled")

    def variant(
        self, index: int, recipe: str, params: dict[str, Any], span: tuple[float, float]
    ) -> VariantReport:
        start = time.monotonic()
        lo, hi = span
        report = VariantReport(
            recipe=recipe,
            params=dict(params),
            requested_params=dict(params),
            status=FAILED,
            reason="",
            summary=explain(recipe),
        )
        try:
            steps = parse_chain(recipe)
            step_params = split_chain_params(steps, params)
            current = self.source
            used: dict[str, Any] = {}
            for n, (step, step_p) in enumerate(zip(steps, step_params, strict=True)):
                self.check_cancelled()
                apply = resolve(step)
                step_dir = self.work / f"v{index}-{n}"
                step_dir.mkdir()
                if not REGISTRY[step].keeps_shapes:
                    current = _without_value_info(current, step_dir / "input.onnx")
                trains = step == DISTILL
                part = (lo + (hi - lo) * 0.7 * n / len(steps), (hi - lo) * 0.7 / len(steps))
                ctx = RecipeContext(
                    model_path=current,
                    out_path=step_dir / f"{step}.onnx",
                    params=step_p,
                    calibration=self.data.training if trains else self.data.calibration,
                    calibration_labels=(
                        self.data.training_labels if trains else self.data.calibration_labels
                    ),
                    evaluation=self.data.evaluation,
                    evaluation_labels=self.data.evaluation_labels,
                    synthetic=self.data.synthetic,
                    work_dir=step_dir / "scratch",
                    log=self.log,
                    progress=lambda f, p=part, s=step: self.progress(
                        p[0] + p[1] * min(max(f, 0.0), 1.0), f"{recipe}: applying {s}"
                    ),
                    cancelled=self.cancelled,
                    settings={
                        "cosine_min": self.opts.cosine_min,
                        "top1_min": self.opts.top1_min,
                        "threads": self.opts.threads,
                    },
                )
                ctx.work_dir.mkdir()
                # Quantizers print progress with print(); keep stdout for the JSON document.
                with contextlib.redirect_stdout(_LogStream(self.log)):
                    outcome = apply(ctx)
                if not Path(outcome.path).is_file():
                    raise EngineError(f"recipe '{step}' reported {outcome.path} but wrote no file")
                used[step] = outcome.params or step_p
                report.notes += [
                    f"{step}: {note}" if len(steps) > 1 else note for note in outcome.notes
                ]
                if outcome.extra:
                    report.extra[step] = outcome.extra
                current = Path(outcome.path)
                if self.info.control_flow_ops:
                    self._resort(current, report, step)
            report.params = used[steps[0]] if len(steps) == 1 else used
            self.check_cancelled()
            self.progress(lo + (hi - lo) * 0.7, f"{recipe}: verifying")
            result = verify_variant(
                self.original,
                current,
                evaluation=self.data.evaluation,
                labels=self.data.evaluation_labels,
                reference=self.reference,
                original_size=self.info.size_bytes,
                original_gzip=self.gzip_original,
                tolerance=self.opts.tolerance,
                latency=self.opts.latency,
                cause=_cause(recipe),
                distilled=DISTILL in steps,
            )
            for name in (
                "status",
                "reason",
                "size_bytes",
                "gzip_bytes",
                "sha256",
                "latency_ms",
                "baseline_latency_ms",
                "latency_ratio",
                "fidelity",
                "quantized_ops_share",
            ):
                setattr(report, name, getattr(result, name))
            report.notes += result.notes
            if report.size_bytes:
                report.size_ratio = round(self.info.size_bytes / report.size_bytes, 3)
                report.gzip_ratio = round(self.gzip_original / report.gzip_bytes, 3)
            report.path = self._keep(current, result)
        except Cancelled:
            raise
        except RecipeNotApplicable as exc:
            report.reason, report.not_applicable = f"not applicable: {exc}", True
        except MissingDependency as exc:
            report.reason = str(exc)
        except EngineError as exc:
            report.reason = str(exc)
        except Exception as exc:  # a bug in a recipe must not take the other variants down
            self.log(traceback.format_exc())
            report.reason = f"internal error in {recipe}: {type(exc).__name__}: {exc}"
        report.elapsed_s = round(time.monotonic() - start, 3)
        self.progress(hi, f"{recipe}: {report.status}")
        self.log(f"{recipe} {report.params}: {report.status}: {report.reason}")
        return report

    def _resort(self, path: Path, report: VariantReport, step: str) -> None:
        """Put back in order a graph whose If/Loop/Scan bodies read outer tensors that a
        quantizer or converter moved after them (see ``sort_topologically``)."""
        model = onnx.load(str(path))
        if sort_topologically(model.graph):
            onnx.save(model, str(path))
            report.notes.append(
                f"{step}: nodes re-ordered so that If/Loop/Scan bodies come after the outer "
                "tensors they read (the converter had sorted by explicit inputs only)"
            )

    def _keep(self, path: Path, result) -> str | None:
        """Move a variant into ``out_dir`` under its content address (atomic rename)."""
        if result.status == ACCEPTED:
            final = self.out_dir / f"{result.sha256}.onnx"
        elif self.opts.keep_rejected or (result.status == REJECTED and result.within_tolerance):
            final = self.out_dir / f"rejected-{result.sha256}.onnx"
        else:
            return None
        os.replace(path, final)
        return str(final)


def compress(
    model_path: str | os.PathLike,
    recipe: str,
    *,
    dataset: str | os.PathLike | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    out_dir: str | os.PathLike,
    options: dict[str, Any] | None = None,
    constraints: dict[str, Any] | None = None,
    progress: Callable[[float, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    params: dict[str, Any] | None = None,
) -> CompressionReport:
    """Compress ``model_path`` with ``recipe`` (a name, a chain ``a+b``, or ``auto``), verify
    every variant against the original, and return the report.

    ``params`` are the recipe's parameters (for a chain: flat, or nested by step name);
    ``options`` are engine settings (see ``EngineOptions``: tolerance, latency runs, threads,
    sample counts); ``constraints`` are ``max_size_bytes`` / ``max_latency_ms`` for the
    recommendation. ``progress(fraction, message)`` is called with fractions from 0 to 1.
    Raises ``EngineError`` for a bad model, dataset or argument (before any variant is made)
    and ``Cancelled`` when ``cancelled()`` turns True; a failing recipe is a ``failed``
    variant, not an exception.
    """
    started = time.monotonic()
    log = log or (lambda message: None)
    report_progress = _monotonic(progress)
    cancelled = cancelled or (lambda: False)
    opts = EngineOptions.from_dict(options)
    constraints = _check_constraints(constraints)
    notes: list[str] = []

    if recipe == AUTO:
        if params:
            raise EngineError("auto chooses its own parameters; do not pass params with auto")
        plan, skipped = candidates(opts.auto_recipes, include_distill=opts.include_distill)
        notes += skipped
        if not plan:
            raise EngineError(
                "auto has no recipe to try" + (f": {'; '.join(skipped)}" if skipped else "")
            )
    else:
        steps = parse_chain(recipe)
        split_chain_params(steps, params)  # refuse unknown parameters before any work
        plan = [(recipe, dict(params or {}))]

    model_path = Path(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_progress(0.0, "inspecting the model")
    info = inspect_model(model_path)
    report_progress(0.03, "preparing data")
    data = prepare_data(
        info.inputs,
        dataset=dataset,
        input_shapes=input_shapes,
        calibration_samples=opts.calibration_samples,
        evaluation_samples=opts.evaluation_samples,
        synthetic_samples=opts.synthetic_samples,
        seed=opts.seed,
    )
    notes += data.notes
    notes += _sweep_stale_work(out_dir)
    work = Path(tempfile.mkdtemp(prefix=_work_prefix(), dir=out_dir))
    try:
        report_progress(0.05, "pre-processing")
        pre = preprocess(model_path, work / "source.onnx", work_dir=work)
        notes += pre.notes
        if cancelled():
            raise Cancelled("compression cancelled")
        report_progress(0.08, "measuring the original")
        run = _Run(
            original=model_path,
            source=pre.path,
            data=data,
            info=info,
            work=work,
            out_dir=out_dir,
            opts=opts,
            log=log,
            progress=report_progress,
            cancelled=cancelled,
        )
        baseline = baseline_latency(model_path, data.evaluation, opts.latency)
        variants: list[VariantReport] = []
        lo, width = 0.12, 0.86 / len(plan)
        for index, (name, step_params) in enumerate(plan):
            span = (lo + width * index, lo + width * (index + 1))
            variants.append(run.variant(index, name, step_params, span))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for i in pareto_front(variants):
        variants[i].pareto = True
    recommended, reason = recommend(
        variants, constraints, original_size=info.size_bytes, original_gzip=run.gzip_original
    )
    report_progress(1.0, "done")
    return CompressionReport(
        model={
            "path": str(model_path),
            "sha256": info.sha256,
            "size_bytes": info.size_bytes,
            "gzip_bytes": run.gzip_original,
            **{
                k: v for k, v in info.to_dict().items() if k not in ("path", "sha256", "size_bytes")
            },
        },
        baseline={"latency_ms": baseline, "accuracy": _baseline_accuracy(run)},
        variants=variants,
        recommended=recommended,
        reason=reason,
        recipe=recipe,
        dataset={
            "path": None if dataset is None else str(dataset),
            "sha256": data.sha256,
            "synthetic": data.synthetic,
            "calibration_samples": data.n_calibration,
            "evaluation_samples": data.n_evaluation,
            "training_samples": data.n_training,
            "labels": data.evaluation_labels is not None,
        },
        tolerance=opts.tolerance.to_dict(),
        constraints=constraints,
        lineage={
            **lineage(),
            "threads": opts.threads,
            "preprocess": {
                "shape_inference": pre.shape_inference,
                "constants_moved": pre.constants_moved,
            },
        },
        notes=notes,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _work_prefix(pid: int | None = None) -> str:
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f".work-{host}-{os.getpid() if pid is None else pid}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_work(out_dir: Path) -> list[str]:
    """Remove work directories left by runs on this host whose process is gone (killed with
    SIGKILL or by the OOM killer, so their ``finally`` never ran). Directories of other hosts
    (a shared volume) and of live processes are left alone."""
    host_prefix = _work_prefix().rsplit("-", 2)[0] + "-"
    removed = 0
    for entry in out_dir.glob(".work-*"):
        rest = entry.name[len(host_prefix) :] if entry.name.startswith(host_prefix) else ""
        pid = rest.split("-", 1)[0]
        if (
            entry.is_dir()
            and pid.isdigit()
            and int(pid) != os.getpid()
            and not _pid_alive(int(pid))
        ):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return [f"removed {removed} work folder(s) left by killed runs"] if removed else []


def _monotonic(progress: Callable[[float, str], None] | None) -> Callable[[float, str], None]:
    """Progress that never goes backwards (sub-steps report rounded fractions)."""
    if progress is None:
        return lambda fraction, message: None
    highest = [0.0]

    def report(fraction: float, message: str) -> None:
        highest[0] = max(highest[0], min(round(fraction, 4), 1.0))
        progress(highest[0], message)

    return report


def _baseline_accuracy(run: _Run) -> float | None:
    labels = run.data.evaluation_labels
    if labels is None:
        return None
    for out in run.reference.values():
        if out.dtype.kind == "f" and out.ndim in (2, 3) and out.shape[-1] > 1:
            top = out.argmax(axis=-1).reshape(len(out), -1)
            if top.shape[1] == 1:
                return round(float((top[:, 0] == labels).mean()), 6)
    return None
