"""The one trainer every method uses (architecture.md §2).

For each stage of ``model.stages()``: epochs of optimiser steps (one Adam per step, over that
step's parameters only), gradient clipping, a non-finite loss stops the run with an error;
after every epoch (every ``eval_every`` epochs for a stage that asks, and at its last epoch) the
validation split is scored and early stopping on validation N@k keeps the best state (never
before the stage's ``min_epochs``; the patience counts epochs, ``train.patience`` raised to cover
``train.min_patience_steps`` optimiser steps: ``TrainConfig.patience_epochs``); the best state is restored
at the end of the stage. History entries of epochs that were not validated have no ``val``.
The test split is evaluated once, after the last stage.

Resumable: after every epoch a checkpoint (model, optimisers, best state, history, and the
torch / NumPy / Python RNG states) is written atomically; an interrupted run continues from its
last completed epoch and reaches the same numbers as an uninterrupted one. The order of train
batches in an epoch is a pure function of (seed, stage, epoch), so it needs no saved state.
"""
from __future__ import annotations

import dataclasses
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import metrics
from benchmark.api import Reranker, Stage
from benchmark.batches import SplitTensors
from benchmark.config import TrainConfig
from benchmark.errors import BenchmarkError


class NonFiniteLoss(BenchmarkError):
    """A training loss became NaN or infinite."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace (read when its handle is created,
        # i.e. at a process's first CUDA matrix product, which comes after this call in a run).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    """The train-batch order of one epoch: a pure function of (seed, stage, epoch)."""
    key = int(np.random.SeedSequence([seed, stage, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(key))


@torch.no_grad()
def predict(model: Reranker, split: SplitTensors, batch_size: int, device: torch.device) -> np.ndarray:
    model.eval()
    out = [model.score(b).float().cpu() for b in split.batches(batch_size, device=device)]
    return torch.cat(out).numpy() if out else np.zeros((0, split.items.shape[1]), dtype=np.float32)


def evaluate(model: Reranker, split: SplitTensors, k: int, batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """Per-request metric vectors of ``model`` on ``split`` (protocol.md §8)."""
    scores = predict(model, split, batch_size, device)
    if not np.isfinite(scores[~np.isneginf(scores)]).all():
        raise NonFiniteLoss("the model produced NaN or +inf scores")
    return metrics.per_request_metrics(scores, split.labels_np, k=k)


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    val: dict[str, float]
    test: dict[str, float]
    test_per_request: dict[str, np.ndarray]
    train_seconds: float
    eval_seconds: float
    seconds_per_epoch: float | None
    resumed_from_epoch: int | None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


CHECKPOINT_PROGRESS = ("tag", "stage", "epoch", "epochs_run", "best_epoch", "best_value", "stale",
                       "train_seconds", "eval_seconds", "stopping")
"""``stopping`` (None in checkpoints written before 2026-12-08): the current stage's early
stopping inputs, ``patience``, ``min_epochs``, ``max_epochs``, and ``stages`` (how many the
method has), from which ``--plan`` bounds the epochs still to go (:func:`min_epochs_left`)."""


def min_epochs_left(progress: dict[str, Any]) -> int | None:
    """The fewest epochs the current stage can still run after the checkpoint's epoch: the run
    stops at the first epoch with ``stale >= patience`` past ``min_epochs`` (see :func:`fit`), so
    with no further improvement that is ``max(patience - stale, min_epochs - epoch)``, within
    ``max_epochs``. Any later stage adds to it. None when the checkpoint does not say."""
    rule = progress.get("stopping")
    if not rule:
        return None
    epoch, stale = int(progress["epoch"]), int(progress["stale"])
    left = max(rule["patience"] - stale, rule["min_epochs"] - epoch, 0)
    return min(left, max(rule["max_epochs"] - epoch, 0))


def checkpoint_progress(path: Path) -> dict[str, Any] | None:
    """Where an interrupted run stands, from its checkpoint: the ``CHECKPOINT_PROGRESS`` fields
    (``tag`` is the config hash it was written for). None when there is no checkpoint; a
    ``{"error": ...}`` dict when the file cannot be read (``fit`` would then fail on it)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)  # our own file (fit writes it)
        return {key: saved.get(key) for key in CHECKPOINT_PROGRESS}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not raised
        return {"error": f"{type(exc).__name__}: {exc}"}


def _loss_parts(value: "torch.Tensor | dict[str, torch.Tensor]") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(value, dict):
        return sum(value.values()), value
    return value, {"loss": value}


def slices(model: Reranker, batch, micro_batch: int) -> list[tuple[Any, float]]:
    """``batch`` as (slice, weight) pairs: slices of at most ``micro_batch`` requests for a
    ``micro_batchable`` model, each weighted by its share of the units its loss averages over
    (``model.slice_weight``), else the whole batch with weight 1."""
    n = len(batch)
    if micro_batch <= 0 or n <= micro_batch or not getattr(model, "micro_batchable", False):
        return [(batch, 1.0)]
    total = model.slice_weight(batch)
    if total <= 0:
        return [(batch, 1.0)]
    parts = [batch.rows(a, min(a + micro_batch, n)) for a in range(0, n, micro_batch)]
    return [(part, model.slice_weight(part) / total) for part in parts]


def train_steps(model: Reranker, steps: list, optims: list, batch, epoch: int, grad_clip: float,
                stage_name: str = "", micro_batch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """One batch of a stage: each active step's loss, backward, clipping and optimiser step (in
    order). Returns each step's loss parts. A non-finite loss raises :class:`NonFiniteLoss`.

    With ``micro_batch`` (``--micro-batch``) a ``micro_batchable`` model's batch is cut into
    slices whose losses, weighted by their share of what the loss averages over, are back-propagated one after
    the other before the step: the same mean loss and gradient as the whole batch (up to float
    rounding and the order random draws are taken in), with activations of a slice's size. Every
    step sees the same slice objects, so a later step can find what an earlier one left for a slice."""
    parts_of = slices(model, batch, micro_batch)
    out = {}
    for step, opt in zip(steps, optims):
        if not step.active(epoch):
            continue
        model.zero_grad(set_to_none=True)
        summed: dict[str, torch.Tensor] = {}
        for part, share in parts_of:
            total, parts = _loss_parts(step.loss(part))
            if not torch.isfinite(total):
                raise NonFiniteLoss(f"non-finite loss in step {step.name!r} at epoch {epoch} "
                                    f"(stage {stage_name!r}): {float(total.detach())}")
            (total if share == 1.0 else total * share).backward()
            for name, value in parts.items():
                value = value if share == 1.0 else value.detach() * share
                summed[name] = value if name not in summed else summed[name] + value
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(step.parameters()), grad_clip)
        opt.step()
        out[step.name] = summed
    return out


def fit(model: Reranker, train: SplitTensors, val: SplitTensors, test: SplitTensors, cfg: TrainConfig, *,
        seed: int, k: int, device: torch.device | str = "cpu", checkpoint: Path | None = None,
        checkpoint_tag: str = "", progress: bool = False, micro_batch: int = 0) -> FitResult:
    """Train ``model`` (already seeded and on ``device``), select on validation, test once.
    ``micro_batch``: see :func:`train_steps` (an execution setting, like the device or threads)."""
    device = torch.device(device)
    history: list[dict[str, Any]] = []
    train_seconds = eval_seconds = 0.0
    epochs_run = best_epoch = 0
    resumed_from = None
    start_stage, start_epoch, saved = 0, 1, None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)  # our own file, written below
        if saved.get("tag") != checkpoint_tag:
            saved = None  # written for another configuration: start over
    if saved is not None:
        model.load_state_dict(saved["model"])
        history, train_seconds, eval_seconds = saved["history"], saved["train_seconds"], saved["eval_seconds"]
        start_stage, start_epoch = saved["stage"], saved["epoch"] + 1
        epochs_run, resumed_from = saved["epochs_run"], saved["epochs_run"]

    patience = cfg.patience_epochs(len(train))  # the record stores it as patience_epochs
    if model.trainable:
        stages: list[Stage] = model.stages()
        for s_index in range(start_stage, len(stages)):
            stage = stages[s_index]
            optims = [torch.optim.Adam(list(step.parameters()), lr=step.lr or cfg.lr, weight_decay=cfg.weight_decay)
                      for step in stage.steps]
            best_value, best_state, stale = -np.inf, None, 0
            first = 1
            if saved is not None and s_index == start_stage:
                for opt, state in zip(optims, saved["optims"]):
                    opt.load_state_dict(state)
                best_value, best_state, stale = saved["best_value"], saved["best_state"], saved["stale"]
                best_epoch, first = saved["best_epoch"], start_epoch
                _set_rng_state(saved["rng"])
                saved = None
            if stage.on_start is not None:
                stage.on_start()
            max_epochs = stage.max_epochs or cfg.max_epochs
            if stage.eval_every < 1:
                raise ValueError(f"stage {stage.name!r}: eval_every must be >= 1, not {stage.eval_every}")
            bar = tqdm(range(first, max_epochs + 1), desc=f"{stage.name}", unit="epoch", disable=not progress,
                       leave=False, initial=first - 1, total=max_epochs)
            for epoch in bar:
                if stale >= patience and epoch > stage.min_epochs:
                    break
                tick = time.perf_counter()
                model.train()
                model.epoch_begin(epoch)
                sums: dict[str, dict[str, float]] = {}
                n_batches = 0
                for batch in train.batches(cfg.batch_size, epoch_order(len(train), seed, s_index, epoch), device):
                    n_batches += 1
                    for step_name, parts in train_steps(model, stage.steps, optims, batch, epoch, cfg.grad_clip,
                                                        stage.name, micro_batch).items():
                        acc = sums.setdefault(step_name, {})
                        for name, value in parts.items():
                            acc[name] = acc.get(name, 0.0) + float(value.detach())
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                epoch_train = time.perf_counter() - tick
                train_seconds += epoch_train
                epochs_run += 1
                entry = {"stage": stage.name, "epoch": epoch, "seconds": epoch_train,
                         "train_loss": {s: {p: v / max(n_batches, 1) for p, v in parts.items()}
                                        for s, parts in sums.items()}}
                if epoch % stage.eval_every == 0 or epoch == max_epochs:
                    tick = time.perf_counter()
                    val_vectors = evaluate(model, val, k, cfg.eval_batch_size, device)
                    eval_seconds += time.perf_counter() - tick
                    val_means = metrics.mean_metrics(val_vectors)
                    monitor = val_means[f"N@{k}"]
                    if monitor > best_value + cfg.min_delta:
                        best_value, best_epoch, stale = monitor, epoch, 0
                        best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
                    else:
                        stale += stage.eval_every  # patience counts epochs, not validations
                    entry["val"] = {m: val_means[m] for m in (f"H@{k}", f"N@{k}", f"M@{k}", f"F1@{k}", "AUC")}
                    bar.set_postfix({f"val N@{k}": f"{monitor:.4f}", "best": f"{best_value:.4f}"})
                history.append({**entry, **model.epoch_log()})
                if checkpoint is not None:
                    _atomic_torch_save({
                        "tag": checkpoint_tag, "stage": s_index, "epoch": epoch, "epochs_run": epochs_run,
                        "model": model.state_dict(), "optims": [o.state_dict() for o in optims],
                        "best_state": best_state, "best_value": best_value, "best_epoch": best_epoch,
                        "stale": stale, "history": history, "rng": _rng_state(),
                        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                        "stopping": {"patience": patience, "min_epochs": stage.min_epochs,
                                     "max_epochs": max_epochs, "stages": len(stages)},
                    }, checkpoint)
            bar.close()
            if best_state is not None:
                model.load_state_dict(best_state)

    tick = time.perf_counter()
    val_vectors = evaluate(model, val, k, cfg.eval_batch_size, device)
    test_vectors = evaluate(model, test, k, cfg.eval_batch_size, device)
    eval_seconds += time.perf_counter() - tick
    timed = [h["seconds"] for h in history]
    return FitResult(best_epoch=best_epoch, epochs_run=epochs_run, history=history,
                     val=metrics.mean_metrics(val_vectors), test=metrics.mean_metrics(test_vectors),
                     test_per_request=test_vectors, train_seconds=train_seconds, eval_seconds=eval_seconds,
                     seconds_per_epoch=float(np.mean(timed)) if timed else None, resumed_from_epoch=resumed_from)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
