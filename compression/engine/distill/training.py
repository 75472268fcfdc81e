"""The distillation training loop (PyTorch, CPU).

Loss, per teacher output:
- class scores [N, C]: ``KL(softmax(t/T) || softmax(s/T)) * T^2`` (Hinton et al.; the T^2 keeps
  gradient magnitudes independent of T), mixed with cross-entropy on the labels when the job's
  dataset has them: ``(1 - alpha) * KL * T^2 + alpha * CE``;
- anything else: mean squared error, divided by the teacher output's variance so that outputs of
  different scales weigh the same.

After every epoch the student is scored on the held-out split (top-1 agreement with the teacher
for class scores, cosine similarity otherwise, averaged over outputs), and the best epoch's
weights are kept. Training stops after ``patience`` epochs without improvement, at the epoch
budget or at the time budget, whichever comes first.

Imports torch at module level: import it only after checking that torch is installed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from compression.engine.base import Cancelled, EngineError, RecipeContext
from compression.engine.distill.students import OutputSpec
from compression.engine.distill.torch_graph import OnnxModule

EVAL_CHUNK = 1024


@dataclass
class Split:
    """Inputs as tensors, the teacher's targets per output, and labels if any."""

    feeds: dict[str, torch.Tensor]
    targets: list[torch.Tensor]
    """Per output: teacher logits for class outputs, the raw values (flattened) otherwise."""
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))


@dataclass
class Config:
    temperature: float
    alpha: float
    epochs: int
    time_budget_s: float
    batch_size: int
    lr: float
    seed: int
    patience: int
    threads: int


@dataclass
class Scores:
    fidelity: float
    """Mean over outputs of top-1 agreement (class) or cosine similarity (regression)."""
    loss: float
    agreement: float | None = None
    accuracy: float | None = None


@dataclass
class Result:
    epochs_run: int
    best_epoch: int
    best: Scores
    stopped_by: str
    seconds: float
    history: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, pin its thread count and ask for deterministic kernels; undo on exit."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _student_logits(out: torch.Tensor, spec: OutputSpec) -> torch.Tensor:
    out = out.float()
    if spec.kind != "class":
        return out.reshape(len(out), -1)
    if spec.student_form == "probs":
        return torch.log(out.clamp_min(1e-12))
    return out


def _losses(
    outs: list[torch.Tensor],
    targets: list[torch.Tensor],
    labels: torch.Tensor | None,
    specs: list[OutputSpec],
    label_output: int | None,
    cfg: Config,
    variances: list[float],
) -> torch.Tensor:
    total = torch.zeros(())
    T = cfg.temperature
    for i, (out, target, spec) in enumerate(zip(outs, targets, specs, strict=True)):
        s = _student_logits(out, spec)
        if spec.kind == "class":
            kd = F.kl_div(
                F.log_softmax(s / T, dim=1),
                F.log_softmax(target / T, dim=1),
                log_target=True,
                reduction="batchmean",
            ) * (T * T)
            if labels is not None and i == label_output:
                total = total + (1 - cfg.alpha) * kd + cfg.alpha * F.cross_entropy(s, labels)
            else:
                total = total + kd
        else:
            total = total + F.mse_loss(s, target) / variances[i]
    return total / len(specs)


@torch.no_grad()
def evaluate(
    module: OnnxModule,
    split: Split,
    specs: list[OutputSpec],
    label_output: int | None,
    cfg: Config,
    variances: list[float],
) -> Scores:
    """Held-out fidelity to the teacher (and accuracy when labels exist)."""
    names = [s.train_tensor for s in specs]
    n = len(split)
    agree = [0.0] * len(specs)
    correct = 0
    loss_sum = 0.0
    for start in range(0, n, EVAL_CHUNK):
        sl = slice(start, start + EVAL_CHUNK)
        outs = module({k: v[sl] for k, v in split.feeds.items()}, outputs=names)
        targets = [t[sl] for t in split.targets]
        labels = split.labels[sl] if split.labels is not None else None
        loss_sum += float(
            _losses(outs, targets, labels, specs, label_output, cfg, variances)
        ) * len(targets[0])
        for i, (out, target, spec) in enumerate(zip(outs, targets, specs, strict=True)):
            s = _student_logits(out, spec)
            if spec.kind == "class":
                agree[i] += float((s.argmax(1) == target.argmax(1)).sum())
                if labels is not None and i == label_output:
                    correct += int((s.argmax(1) == labels).sum())
            else:
                agree[i] += float(F.cosine_similarity(s, target, dim=1, eps=1e-12).sum())
    per_output = [a / n for a in agree]
    class_scores = [a for a, s in zip(per_output, specs, strict=True) if s.kind == "class"]
    return Scores(
        fidelity=float(np.mean(per_output)),
        loss=loss_sum / n,
        agreement=float(np.mean(class_scores)) if class_scores else None,
        accuracy=correct / n if split.labels is not None and label_output is not None else None,
    )


def train(
    module: OnnxModule,
    specs: list[OutputSpec],
    train_split: Split,
    held: Split,
    label_output: int | None,
    cfg: Config,
    ctx: RecipeContext,
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Train ``module`` in place; on return it holds the best held-out epoch's weights.

    ``progress`` gets this loop's own fraction done (epochs or time budget, whichever is ahead).
    """
    progress = progress or ctx.progress
    started = time.monotonic()
    names = [s.train_tensor for s in specs]
    variances = [
        float(t.var()) + 1e-12 if s.kind != "class" else 1.0
        for t, s in zip(train_split.targets, specs, strict=True)
    ]
    with deterministic(cfg.seed, cfg.threads):
        order = np.random.default_rng(cfg.seed)
        optimizer = torch.optim.Adam(module.parameters(), lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        n = len(train_split)
        best: Scores | None = None
        best_epoch, best_state = 0, module.weights()
        stopped_by, history = "epochs", []
        epoch = 0
        for epoch in range(1, cfg.epochs + 1):
            seen, loss_sum, out_of_time = 0, 0.0, False
            permutation = torch.from_numpy(order.permutation(n))
            for start in range(0, n, cfg.batch_size):
                if ctx.cancelled():
                    raise Cancelled(f"distill cancelled during epoch {epoch}")
                idx = permutation[start : start + cfg.batch_size]
                feeds = {k: v[idx] for k, v in train_split.feeds.items()}
                targets = [t[idx] for t in train_split.targets]
                labels = train_split.labels[idx] if train_split.labels is not None else None
                loss = _losses(
                    module(feeds, outputs=names),
                    targets,
                    labels,
                    specs,
                    label_output,
                    cfg,
                    variances,
                )
                if not torch.isfinite(loss):
                    raise EngineError(
                        f"distill: training diverged (loss {float(loss)}) in epoch {epoch}; "
                        f"try a lower lr than {cfg.lr}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(idx)
                loss_sum += loss.item() * len(idx)
                if time.monotonic() - started > cfg.time_budget_s:
                    out_of_time = True
                    break
            schedule.step()
            scores = evaluate(module, held, specs, label_output, cfg, variances)
            # Agreement on a few hundred samples moves in coarse steps: break ties on held-out loss.
            if best is None or (scores.fidelity, -scores.loss) > (best.fidelity, -best.loss):
                best, best_epoch, best_state = scores, epoch, module.weights()
            elapsed = time.monotonic() - started
            line = (
                f"distill: epoch {epoch}/{cfg.epochs} loss {loss_sum / max(seen, 1):.4f} "
                f"held-out fidelity {scores.fidelity:.4f}"
            )
            if scores.accuracy is not None:
                line += f" accuracy {scores.accuracy:.4f}"
            line += f" (best {best.fidelity:.4f} at epoch {best_epoch}, {elapsed:.1f}s)"
            ctx.log(line)
            history.append(
                {
                    "epoch": epoch,
                    "loss": loss_sum / max(seen, 1),
                    "fidelity": scores.fidelity,
                    "accuracy": scores.accuracy,
                }
            )
            progress(min(1.0, max(epoch / cfg.epochs, elapsed / cfg.time_budget_s)))
            if out_of_time:
                stopped_by = "time_budget"
                break
            if epoch - best_epoch >= cfg.patience:
                stopped_by = "early_stopping"
                break
        with torch.no_grad():
            for name, p in zip(module.param_names, module.weights_list, strict=True):
                p.copy_(torch.from_numpy(best_state[name]))
    assert best is not None
    return Result(
        epochs_run=epoch,
        best_epoch=best_epoch,
        best=best,
        stopped_by=stopped_by,
        seconds=time.monotonic() - started,
        history=history,
    )
