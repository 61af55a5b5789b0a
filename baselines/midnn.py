"""MiDNN, the mutual-influence-aware DNN (Zhuang et al., IJCAI 2018; methods.md §2.4).

The DNR paper (§4.1, Table 1) groups MiDNN with the traditional recommenders, which "individually
predict the scores of candidate items": its family here is ``sequential``, the family of that
group (SASRec, Caser, GRU4Rec). Only the DNN of the paper is implemented; its miRNN / beam-search
list generator is not, as DNR treats MiDNN as a pointwise scorer (methods.md §2.4).

Inputs it sees: the candidate item ids and the user state h_u of the shared history encoder
(methods.md §1.4; the LibRerank version has no user at all). The list enters only through the
min-max statistics below, so it sees **no order**: permuting the list permutes the scores. It
never reads ``batch.scores``.

Per candidate i, with f_i = [e_{c_i} ; h_u] (methods.md §2.4 adaptation):

    g_i = (e_i - min_k e_k) / (max_k e_k - min_k e_k)       (per dimension, over the real candidates)
    logit_i = MLP(BN([e_i ; h_u ; g_i]))                     (MLP 512-256-128-1, ReLU, dropout)

trained with pointwise BCE. g_i is the paper's "global feature" extension of f_i: the min-max
normalisation of each feature across the list. The h_u half of f_i is the same for every
candidate of a list, so its normalised value is identically 0 (the max == min guard); it is left
out of g rather than fed as 128 constant zeros. A dimension whose max equals its min within a list
(e.g. a list of identical items) gets g = 0 there. Batch normalisation runs over the real
candidates only (padded slots are dropped before it).

Deviations: item ids only (no dense/sparse feature fields), so the global features are
statistics of learned embeddings (weak, as methods.md §2.4 warns); d = 128 item embeddings.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker, bce_loss
from benchmark.registry import register
from baselines.blocks import UserStateEncoder, item_table, mlp, widths


def list_min_max(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-dimension min-max normalisation of ``x`` ``[B, C, d]`` over the real candidates of each
    list (``mask`` ``[B, C]``); 0 where max - min <= eps and on padded slots."""
    real = mask[..., None]
    has_real = mask.any(dim=1)[:, None, None]
    lo = torch.where(real, x, torch.full_like(x, torch.inf)).amin(dim=1, keepdim=True)
    hi = torch.where(real, x, torch.full_like(x, -torch.inf)).amax(dim=1, keepdim=True)
    # a list with no real candidate has lo = +inf, hi = -inf: make them finite before any arithmetic
    lo = torch.where(has_real, lo, torch.zeros_like(lo))
    hi = torch.where(has_real, hi, torch.zeros_like(hi))
    spread = hi - lo
    varies = spread > eps
    g = (x - lo) / torch.where(varies, spread, torch.ones_like(spread))
    return torch.where(varies & real, g, torch.zeros_like(g))


@register("midnn", groups=("baselines",))
class MiDNN(Reranker):
    """MiDNN: candidate + user features extended with list min-max 'global' features, BN + MLP, BCE."""

    family = "sequential"

    def __init__(self, spec: DataSpec, *, hidden: int = 128, layers: str = "512-256-128", dropout: float = 0.1,
                 user_layers: int = 1, n_heads: int = 4, ffn: int = 128):
        """``layers``: MLP widths (LibRerank's 512-256-128); ``user_layers``/``n_heads``/``ffn``
        configure the shared user-state encoder."""
        super().__init__(spec)
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.norm = nn.BatchNorm1d(3 * hidden)
        self.mlp = mlp((3 * hidden, *widths(layers, "layers"), 1), dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        user = self.user_encoder(batch, self.items(batch.hist_items))
        item = self.items(batch.items)
        g = list_min_max(item, batch.mask)
        features = torch.cat([item, user[:, None, :].expand_as(item), g], dim=-1)
        real = self.mlp(self.norm(features[batch.mask])).squeeze(-1)
        return torch.zeros(batch.mask.shape, dtype=real.dtype, device=real.device).masked_scatter(batch.mask, real)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.logits(batch).masked_fill(~batch.mask, -torch.inf)

    def loss(self, batch: Batch) -> torch.Tensor:
        return bce_loss(self.logits(batch), batch.labels, batch.mask)
