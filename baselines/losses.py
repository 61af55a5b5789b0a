"""Listwise losses shared by the list rerankers (pointwise BCE lives in :mod:`benchmark.api`).

:func:`attention_rank_loss` is the "attention rank" loss of DLCM (Ai et al., SIGIR 2018),
which SetRank (Pang et al., SIGIR 2020) trains with as well; methods.md §3.1 and §3.2. Over the
real candidates of one list (``mask`` True), with ``psi(y) = exp(y)`` for ``y > 0`` and 0
otherwise:

    target    a_i = psi(y_i) / sum_k psi(y_k)          (uniform over the positives for 0/1 labels)
    predicted p_i = exp(s_i) / sum_k exp(s_k)           (softmax of the scores over the list)
    loss      = - sum_i a_i log p_i                     (cross-entropy of the two distributions)

and the batch loss is the mean over the lists that have at least one positive. A list without a
positive has no target distribution (methods.md §3.1 pitfall); it is left out of the mean rather
than given an invented one, so it adds no gradient. A batch in which no list has a positive gives
0 (still attached to the graph, so the trainer's backward and optimiser step are no-ops).

The loss depends on the scores only up to a constant per list, so scores trained with it are
comparable within a list (all the metrics need), not across lists.
"""
from __future__ import annotations

import torch


def attention_rank_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits``, ``labels`` ``[B, C]`` (labels >= 0, graded allowed), ``mask`` ``[B, C]`` bool
    (False = padded slot, never part of either distribution). Returns a scalar (module doc)."""
    positive = mask & (labels > 0)
    psi = torch.where(positive, labels.exp(), torch.zeros_like(labels))
    total = psi.sum(dim=1, keepdim=True)
    has_positive = total[:, 0] > 0
    target = psi / total.clamp(min=torch.finfo(psi.dtype).tiny)
    # padded slots leave the softmax; a row with no real slot at all gets finite dummy logits
    # (it has no positive, so it is excluded below) so that no NaN reaches the backward pass
    z = torch.where(mask, logits, torch.full_like(logits, -torch.inf))
    z = torch.where(mask.any(dim=1, keepdim=True), z, torch.zeros_like(z))
    log_p = torch.log_softmax(z, dim=1).masked_fill(~mask, 0.0)
    per_list = -(target * log_p).sum(dim=1)
    return (per_list * has_positive).sum() / has_positive.sum().clamp(min=1)


def lists_with_a_positive(labels: torch.Tensor, mask: torch.Tensor) -> int:
    """How many lists :func:`attention_rank_loss` averages over: those with a real positive."""
    return int((mask & (labels > 0)).any(dim=1).sum())
