"""DLCM, the Deep Listwise Context Model (Ai et al., SIGIR 2018; methods.md §3.1).

Inputs it sees: the candidate item ids, **in the initial (retriever) order** (column j of
``batch.items`` is initial position j; DLCM's premise is that this order carries the local
ranking context), and the user state h_u of the shared history encoder (methods.md §1.4; the
original, an IR model, has no user). It never reads ``batch.scores``: the retriever ranking
reaches it only through the order, as in the paper (methods.md §1.2 discusses that leak).

Per request, with f_i = [e_{c_i} ; h_u] (item embedding and user state):

    x_i   = elu(W_1 elu(W_0 f_i + b_0) + b_1)                 (the paper's input abstraction layers)
    o, s  = GRU(x fed in the order given by ``feed``)         (o_i: output at item i; s: final state)
    logit = v · (o_i ⊙ tanh(W_φ s + b_φ))                      (the paper's local ranking function φ)

trained with the listwise attention-rank loss (:func:`baselines.losses.attention_rank_loss`,
the paper's loss); lists without a positive are left out of the loss.

``feed``: ``"bottom-up"`` (default, the paper) feeds the lowest-ranked candidate first and the
top-ranked last, so that the final state s, which conditions every score, is closest to the best
candidates; ``"top-down"`` feeds them in the given order (LibRerank). Padded candidates
(``mask`` False) are moved behind the real ones before the GRU, so they never enter a real
candidate's output or s (the GRU is causal and s is read at the last real step).

Deviations: d = 128 (DNR uses 128 for every model) where the paper's GRU is smaller; dropout on
the GRU outputs before φ (LibRerank puts it on the s branch); LibRerank's batch normalisation of
o and s and its "subtract the list minimum" are left out (the loss ignores a per-list shift).
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import UserStateEncoder, candidate_inputs, item_table
from baselines.losses import attention_rank_loss, lists_with_a_positive

FEEDS = ("bottom-up", "top-down")


@register("dlcm", groups=("baselines",))
class DLCM(Reranker):
    """DLCM: GRU over the candidates in initial order, local ranking function φ, attention-rank loss."""

    family = "list-refinement"
    micro_batchable = True  # attention-rank loss per list; slices weighted by their lists with a positive

    def __init__(self, spec: DataSpec, *, hidden: int = 128, feed: str = "bottom-up", dropout: float = 0.1,
                 user_layers: int = 1, n_heads: int = 4, ffn: int = 128):
        """``user_layers``/``n_heads``/``ffn`` configure the shared user-state encoder."""
        super().__init__(spec)
        if feed not in FEEDS:
            raise ConfigError(f"feed must be one of {', '.join(FEEDS)}, not {feed!r}")
        self.feed = feed
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.abstraction = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ELU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, hidden), nn.ELU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.state_proj = nn.Linear(hidden, hidden)  # W_φ, b_φ
        self.v = nn.Linear(hidden, 1, bias=False)

    def feed_order(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order [B, C], n_real [B])``: ``order[b, t]`` is the column fed at GRU step t. The
        real candidates come first, in initial order (``top-down``) or reversed (``bottom-up``),
        then the padded ones."""
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        n_real = mask.sum(dim=1)
        if self.feed == "bottom-up":
            step = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
            n = n_real[:, None]
            order = order.gather(1, torch.where(step < n, n - 1 - step, step))
        return order, n_real

    def logits(self, batch: Batch) -> torch.Tensor:
        x = self.abstraction(candidate_inputs(batch, self.items, self.user_encoder))
        order, n_real = self.feed_order(batch.mask)
        width = x.shape[-1]
        outputs, _ = self.gru(x.gather(1, order[..., None].expand(-1, -1, width)))
        final = outputs.gather(1, (n_real - 1).clamp(min=0)[:, None, None].expand(-1, 1, width))[:, 0]
        back = torch.argsort(order, dim=1)  # step at which each column was fed
        o = outputs.gather(1, back[..., None].expand(-1, -1, width))
        return self.v(self.dropout(o) * torch.tanh(self.state_proj(final))[:, None, :]).squeeze(-1)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.logits(batch).masked_fill(~batch.mask, -torch.inf)

    def loss(self, batch: Batch) -> torch.Tensor:
        return attention_rank_loss(self.logits(batch), batch.labels, batch.mask)

    def slice_weight(self, batch: Batch) -> float:
        return float(lists_with_a_positive(batch.labels, batch.mask))  # the loss's mean is over these
