"""The MF retriever (paper App. E.1, protocol.md §5.2–§5.3 and §7), cross-fitted.

``K + 1`` independent matrix-factorisation models are trained one after another: model
``k < K`` never sees the interactions of fold-``k`` train windows (it scores exactly those
requests); model ``K``, the full retriever, sees all retriever rows and scores val and test
requests. (Training them as one stacked module was measured 2x slower on CPU: the embedding
backward over the stacked tables dominates.)

MF: ``logit(u, i) = <p_u, q_i> + b_i``, dim 128, Adam lr 1e-3, BCE on label-1 interactions against
uniformly sampled unobserved items (``mf_negatives`` per positive) plus observed label-0
interactions, early stopping on the AUC of the chronological hold-out (patience 5).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from benchmark.config import DataConfig
from benchmark.data.protocol import Interactions, RetrieverRows
from benchmark.errors import UserInputError

log = logging.getLogger(__name__)


class MF(torch.nn.Module):
    """``logit(u, i) = <p_u, q_i> + b_i``; item code 0 is padding and never scored as a candidate."""

    def __init__(self, n_users: int, n_items: int, dim: int, generator: torch.Generator, init_std: float = 0.01):
        super().__init__()
        scale = init_std
        self.user = torch.nn.Parameter(torch.randn(n_users, dim, generator=generator) * scale)
        self.item = torch.nn.Parameter(torch.randn(n_items + 1, dim, generator=generator) * scale)
        self.bias = torch.nn.Parameter(torch.zeros(n_items + 1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` for the pairs ``(users[b], items[b])``."""
        # index_select: its backward (index_add) is ~1.7x faster on CPU than embedding's
        return (self.user.index_select(0, users) * self.item.index_select(0, items)).sum(-1) \
            + self.bias.index_select(0, items)

    def all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_items + 1]`` for every item (column 0 is padding)."""
        return self.user[users] @ self.item.T + self.bias


@dataclasses.dataclass
class MFFit:
    model: MF
    auc: float
    """Hold-out AUC at the best epoch."""
    best_epoch: int
    epochs: int
    history: list[float]
    seconds: float


def _pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return users.astype(np.int64) * (n_items + 1) + items


class NegativeSampler:
    """Uniform items the user has not interacted with in the given rows (one redraw on a
    collision; the few that collide twice are kept)."""

    DENSE_LIMIT = 1 << 27
    """Up to this many (user, item) cells the seen-set is a dense boolean matrix (128 MiB);
    beyond it, a sorted key array with binary search."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, rng: np.random.Generator):
        self.n_items = n_items
        self.rng = rng
        keys = _pair_keys(users, items, n_items)
        n_users = int(users.max()) + 1 if len(users) else 1
        if n_users * (n_items + 1) <= self.DENSE_LIMIT:
            self.matrix = np.zeros((n_users, n_items + 1), dtype=bool)
            self.matrix[users, items] = True
            self.observed = None
        else:
            self.matrix = None
            self.observed = np.unique(keys)

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.matrix is not None:
            inside = users < self.matrix.shape[0]
            return inside & self.matrix[np.where(inside, users, 0), items]
        keys = _pair_keys(users, items, self.n_items)
        pos = np.minimum(np.searchsorted(self.observed, keys), len(self.observed) - 1)
        return self.observed[pos] == keys

    def __call__(self, users: np.ndarray) -> np.ndarray:
        items = self.rng.integers(1, self.n_items + 1, size=len(users))
        again = self.seen(users, items)
        items[again] = self.rng.integers(1, self.n_items + 1, size=int(again.sum()))
        return items


def fit_mf(data: Interactions, train: np.ndarray, holdout: np.ndarray, cfg: DataConfig, seed: int,
           name: str = "MF", progress: bool = True) -> MFFit:
    """Train one MF on the interaction rows ``train`` (bool mask), early-stopped on the AUC of the
    positives in ``holdout``, each paired with one unobserved item (protocol.md §7)."""
    started = time.perf_counter()
    rng = np.random.default_rng([cfg.data_seed, seed])
    model = MF(data.n_users, data.n_items, cfg.mf_dim, torch.Generator().manual_seed(int(rng.integers(2**31))),
               cfg.mf_init_std)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.mf_lr, weight_decay=cfg.mf_weight_decay, fused=True)

    rows = np.flatnonzero(train)
    positives = rows[data.label[rows] == 1]
    observed_neg = rows[data.label[rows] == 0] if cfg.mf_observed_negatives else rows[:0]
    sampler = NegativeSampler(data.user[rows], data.item[rows], data.n_items, rng)

    held = np.flatnonzero(holdout)
    held = held[data.label[held] == 1]
    if len(held) == 0 or len(positives) == 0:
        raise UserInputError("the MF retriever has no training or hold-out positives; the dataset is too "
                             "small for the protocol (lower data.k_core or use more users)")
    known = train | holdout
    eval_sampler = NegativeSampler(data.user[known], data.item[known], data.n_items,
                                   np.random.default_rng([cfg.data_seed, seed, 1]))
    ev_users = torch.from_numpy(np.concatenate([data.user[held], data.user[held]]))
    ev_items = torch.from_numpy(np.concatenate([data.item[held], eval_sampler(data.user[held])]))
    ev_labels = np.concatenate([np.ones(len(held)), np.zeros(len(held))])

    n_batches = max(1, int(np.ceil(len(positives) / cfg.mf_batch_size)))
    best, best_epoch, best_state, stale = -np.inf, 0, None, 0
    history: list[float] = []
    bar = tqdm(range(1, cfg.mf_max_epochs + 1), desc=name, unit="epoch", disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        for pos_rows, obs_rows in zip(np.array_split(rng.permutation(positives), n_batches),
                                      np.array_split(rng.permutation(observed_neg), n_batches)):
            pos_users = data.user[pos_rows]
            neg_users = np.repeat(pos_users, cfg.mf_negatives)
            users = np.concatenate([pos_users, neg_users, data.user[obs_rows]])
            items = np.concatenate([data.item[pos_rows], sampler(neg_users), data.item[obs_rows]])
            target = torch.zeros(len(users))
            target[: len(pos_rows)] = 1.0
            logits = model(torch.from_numpy(users), torch.from_numpy(items))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        with torch.no_grad():
            model.eval()
            auc = float(roc_auc_score(ev_labels, model(ev_users, ev_items).numpy()))
        history.append(auc)
        if auc > best:
            best, best_epoch, stale = auc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(auc=f"{auc:.4f}", best=f"{best:.4f}")
        if stale >= cfg.mf_patience:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return MFFit(model, best, best_epoch, epoch, history, time.perf_counter() - started)


@dataclasses.dataclass
class CrossFittedRetriever:
    """The full retriever (scores val/test requests) and one model per fold (scores the train
    requests of that fold, whose windows it never saw)."""

    full: MFFit
    folds: list[MFFit]

    def model_for(self, fold: int) -> MF:
        return self.full.model if fold < 0 else self.folds[fold].model

    def save(self, path: Path) -> None:
        """Tensors and plain numbers only, so ``load`` can use ``weights_only=True``; atomic."""
        payload = [{"state": f.model.state_dict(), "auc": f.auc, "best_epoch": f.best_epoch, "epochs": f.epochs,
                    "history": f.history, "seconds": f.seconds} for f in [self.full, *self.folds]]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "CrossFittedRetriever":
        fits = []
        for entry in torch.load(path, weights_only=True):
            state = entry.pop("state")
            n_users, dim = state["user"].shape
            model = MF(n_users, state["item"].shape[0] - 1, dim, torch.Generator())
            model.load_state_dict(state)
            model.eval()
            fits.append(MFFit(model=model, **entry))
        return cls(full=fits[0], folds=fits[1:])


@dataclasses.dataclass(frozen=True)
class FitTask:
    seed: int
    train: np.ndarray
    holdout: np.ndarray
    name: str


def cross_fit_tasks(rows: RetrieverRows, n_folds: int) -> list[FitTask]:
    """The full model (seed ``n_folds``) and fold model ``k`` (seed ``k``), which loses the
    training and hold-out rows of fold-``k`` train windows (protocol.md §5.3)."""
    tasks = [FitTask(n_folds, rows.train, rows.holdout, "MF full")]
    for k in range(n_folds):
        outside = rows.fold != k
        tasks.append(FitTask(k, rows.train & outside, rows.holdout & outside, f"MF fold {k + 1}/{n_folds}"))
    return tasks


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _fit_in_worker(threads: int, data: Interactions, task: FitTask, cfg: DataConfig) -> tuple[int, MFFit, float]:
    torch.set_num_threads(threads)
    fit = fit_mf(data, task.train, task.holdout, cfg, seed=task.seed, name=task.name, progress=False)
    return task.seed, fit, peak_rss_mb()


def fit_cross_fitted(data: Interactions, rows: RetrieverRows, cfg: DataConfig, n_jobs: int = 1,
                     progress: bool = True) -> tuple[CrossFittedRetriever, float]:
    """Fit the full MF and the K fold models, in parallel processes when ``n_jobs > 1``
    (joblib/loky). Each model has its own seed, so the result does not depend on ``n_jobs``.
    Also returns the largest worker peak RSS in MiB (0 when fitted in this process)."""
    tasks = cross_fit_tasks(rows, cfg.n_folds)
    n_jobs = max(1, min(n_jobs, len(tasks)))
    fits: dict[int, MFFit] = {}
    worker_peak = 0.0
    bar = tqdm(total=len(tasks), desc="MF retriever (full + folds)", unit="model", disable=not progress, leave=False)
    if n_jobs == 1:
        for task in tasks:
            fits[task.seed] = fit_mf(data, task.train, task.holdout, cfg, seed=task.seed, name=task.name,
                                     progress=progress)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // n_jobs)
        parallel = joblib.Parallel(n_jobs=n_jobs, backend="loky", return_as="generator_unordered")
        for seed, fit, peak in parallel(joblib.delayed(_fit_in_worker)(threads, data, t, cfg) for t in tasks):
            fits[seed] = fit
            worker_peak = max(worker_peak, peak)
            bar.update()
    bar.close()
    for task in tasks:
        fit = fits[task.seed]
        log.info("%s: hold-out AUC %.4f at epoch %d of %d (%.1fs)", task.name, fit.auc, fit.best_epoch,
                 fit.epochs, fit.seconds)
    models = CrossFittedRetriever(full=fits[cfg.n_folds], folds=[fits[k] for k in range(cfg.n_folds)])
    return models, worker_peak
