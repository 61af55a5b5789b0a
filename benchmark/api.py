"""The method contract (architecture.md §1): everything a reranker implements, nothing more.

A method is a ``torch.nn.Module`` subclass of :class:`Reranker` whose hyper-parameters are
explicit keyword arguments with defaults (so an unknown setting is an error and ``--list`` can
print them). The shared trainer calls only:

* ``score(batch)``: one real score per candidate ``[B, C]`` (padded slots ``-inf``); the
  displayed list is the stable top-k of it, ties falling back to the retriever order;
* ``rerank(batch, k)``: the displayed top-k ``[B, k]`` (default: stable sort of ``score``);
* ``loss(batch)``: a scalar tensor, or a dict of named parts that are summed and logged;
* ``stages()``: the training phases, each a list of optimiser steps per batch (default: one
  phase, one step on ``loss`` over all parameters). Methods that train in phases (an evaluator
  and then a generator) or alternate steps within a batch (DNR's reranker and noise-generator
  steps) say so here; the trainer never branches on method names;
* ``epoch_begin(epoch)`` / ``epoch_log()``: optional hooks (e.g. DNR switches generators and
  reports noise statistics).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch

FAMILIES = ("reference", "sequential", "list-refinement", "generator-evaluator", "diffusion", "score-variant", "dnr")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a model may know about the data when it is built."""

    dataset: str
    n_users: int
    n_items: int
    """Real items are coded 1..n_items; 0 is padding (embedding tables need n_items + 1 rows)."""
    list_len: int
    """Candidates per request (50)."""
    history_len: int
    k: int
    """Displayed list size and metric cut-off (6)."""


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of requests as tensors (all on one device).

    ``items``/``scores``/``labels``/``mask`` are ``[B, C]`` in the initial (retriever) order,
    so column ``j`` has initial position ``j``. ``scores`` is the retriever score x in (0, 1);
    methods that must not see it (the plain baselines) simply do not read it. ``hist_items`` and
    ``hist_labels`` are ``[B, H]``, oldest first, left-padded with item 0; ``hist_len`` the real
    length.

    ``exposed`` ``[B, C]`` marks the candidates that were in the logged window (the 6 exposed
    items; the other 44 are retriever fillers). Like ``labels`` it is a **training signal only**
    (the logged list that EGRerank's evaluator, NAR4Rec and DCDR learn from): ``score`` and
    ``rerank`` must never read it, since every positive is exposed (a registry-wide test scores
    each method with altered labels and exposure and expects the same scores)."""

    request_id: torch.Tensor
    user: torch.Tensor
    items: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    hist_items: torch.Tensor
    hist_labels: torch.Tensor
    hist_len: torch.Tensor
    exposed: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def rows(self, start: int, stop: int) -> "Batch":
        """Requests ``start:stop`` of this batch (views, no copy)."""
        return Batch(**{f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)})


@dataclasses.dataclass
class Step:
    """One optimiser step per batch: ``loss`` is minimised over ``parameters()`` only (every
    other parameter is left untouched by this step). ``active(epoch)`` switches it on/off."""

    name: str
    loss: Callable[[Batch], "torch.Tensor | dict[str, torch.Tensor]"]
    parameters: Callable[[], Iterable[torch.nn.Parameter]]
    active: Callable[[int], bool] = lambda epoch: True
    lr: float | None = None
    """Learning rate of this step's optimiser (None: the run's ``train.lr``)."""


@dataclasses.dataclass
class Stage:
    """A training phase with its own epochs, early stopping on validation N@k and best-state
    restore. ``min_epochs``: early stopping may not end the phase before this epoch."""

    name: str
    steps: list[Step]
    min_epochs: int = 0
    max_epochs: int | None = None
    """Cap for this phase (None: the run's ``train.max_epochs``)."""
    eval_every: int = 1
    """Validate every this many epochs (and at the phase's last epoch); ``train.patience`` still
    counts epochs, so a phase stops at the first validation that leaves ``patience`` or more
    epochs without improvement. For methods whose validation costs far more than an epoch of
    training (DiffuRec's 32-step reverse chain); the original DiffuRec validates every 20 epochs."""
    on_start: Callable[[], None] | None = None
    """Called when the phase starts, and again when a run resumes inside it (e.g. EGRerank
    switches ``score`` from its evaluator to its generator)."""


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pointwise BCE over the real candidates (Eq. 2 of the DNR paper)."""
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1)


def order_scores(order: torch.Tensor, mask: torch.Tensor, rest: torch.Tensor | None = None) -> torch.Tensor:
    """A full score vector ``[B, C]`` from an emitted order (methods.md §1.3): the ``k`` chosen
    columns ``order`` ``[B, k]`` (best first) get ``2 + (k - r) / k`` at rank ``r`` (so the stable
    top-k of the result is exactly ``order``); every other real candidate gets a value in
    ``[0, 1)`` that keeps the order of ``rest`` (e.g. an evaluator's item scores; ties and
    ``rest=None`` fall back to the retriever order), and padded slots ``-inf``. AUC computed from
    these scores is rank-derived: set ``rank_derived_auc = True`` on the method."""
    batch, width = mask.shape
    k = order.shape[1]
    if rest is None:
        below = torch.zeros(batch, width, device=mask.device)
    else:
        # rank of each candidate under ``rest`` (descending, stable), mapped into [0, 1)
        ranked = torch.argsort(rest.masked_fill(~mask, -torch.inf), dim=1, descending=True, stable=True)
        position = torch.argsort(ranked, dim=1, stable=True).to(torch.float32)
        below = 1.0 - (position + 1) / (width + 1)
    top = 2.0 + (k - torch.arange(k, device=mask.device, dtype=torch.float32)) / k
    out = below.scatter(1, order, top.expand(batch, -1).contiguous())
    return out.masked_fill(~mask, -torch.inf)


class Reranker(torch.nn.Module):
    """Base class of every method. Subclasses set ``family`` and implement ``score`` (and
    ``loss`` unless pointwise BCE on ``score`` is right for them)."""

    family: ClassVar[str] = "list-refinement"
    trainable: ClassVar[bool] = True
    uses_retriever_score: ClassVar[bool] = False
    """True for methods that read ``batch.scores`` (score variants, DNR, the retriever row)."""
    rank_derived_auc: ClassVar[bool] = False
    """True when ``score`` is derived from an emitted order (methods.md §1.3)."""
    micro_batchable: bool = False
    """True when every training loss is a mean over units of the batch counted by
    :meth:`slice_weight` and nothing in training couples requests (no BatchNorm, no statistics
    or negatives across the batch), so a batch's gradient is the weighted sum of its slices'
    gradients and ``--micro-batch`` may split it. Only then does the trainer slice the batch;
    other methods step on whole batches."""

    def __init__(self, spec: DataSpec):
        super().__init__()
        self.spec = spec

    def score(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def rerank(self, batch: Batch, k: int) -> torch.Tensor:
        scores = self.score(batch).masked_fill(~batch.mask, -torch.inf)
        return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]

    def loss(self, batch: Batch) -> "torch.Tensor | dict[str, torch.Tensor]":
        return bce_loss(self.score(batch), batch.labels, batch.mask)

    def stages(self) -> list[Stage]:
        return [Stage("main", [Step("model", self.loss, self.parameters)])]

    def slice_weight(self, batch: Batch) -> float:
        """How many units the training loss averages over in ``batch``: its requests (every list
        has all its candidates, so per-candidate means weigh the same). A micro-batch slice's loss
        is weighted by its share of the batch's total (``trainer.slices``)."""
        return float(len(batch))

    def epoch_begin(self, epoch: int) -> None:
        """Called before each training epoch (1-based) of every stage."""

    def epoch_log(self) -> dict[str, Any]:
        """Extra JSON-serialisable values recorded in the per-epoch history (after each
        training epoch), e.g. noise histograms."""
        return {}
