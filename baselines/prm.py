"""PRM (Pei et al., 2019; methods.md §3.3), DNR's main backbone, and its score-input variants.

Per candidate i of a request (Kuaishou "PV" input, methods.md §3.3):

    pv_i  = ScoreInput(LN(W_u h_u), LN(W_e e_i), x)          (summed; x only for the c/+/w variants, §7)
    H     = ListEncoder(MLP(pv) + p_i)                        (p_i: learned embedding of initial position i)
    logit = w · (H_i + x_i v) + b                             (x_i v only with late_score, §6.12)

trained with pointwise BCE on the logits (Eq. 2). ``encode`` and ``head`` are separate so that
DNR can run the encoder once and evaluate the head with the real and the synthetic score.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker, bce_loss
from benchmark.registry import register, register_variant
from baselines.blocks import ListEncoder, UserStateEncoder, item_table, mlp
from baselines.score_inputs import ScoreInput, register_score_variants


@register("prm", groups=("baselines",))
class PRM(Reranker):
    """PRM: personalised candidate vectors + initial-position embeddings, transformer over the list, BCE."""

    family = "list-refinement"
    micro_batchable = True  # per-candidate BCE, no statistic across requests

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 2, n_heads: int = 4, ffn: int = 128,
                 dropout: float = 0.1, causal: bool = False, user_layers: int = 1, score_input: str = "none",
                 late_score: bool = False):
        super().__init__(spec)
        self.late_score = late_score
        self.uses_retriever_score = score_input != "none" or late_score
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.user_part = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.item_part = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.score_input = ScoreInput(score_input, hidden)
        self.input_mlp = mlp((hidden, hidden, hidden), dropout)
        self.encoder = ListEncoder(spec.list_len, hidden, n_layers, n_heads, ffn, dropout, causal=causal)
        # late fusion starts at zero effect; it still learns, since d logit / d v = x * w and w != 0
        self.late_weight = nn.Parameter(torch.zeros(hidden)) if late_score else None
        self.out = nn.Linear(hidden, 1)

    def context(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user state [B, hidden], candidate item embeddings [B, C, hidden])``."""
        return self.user_encoder(batch, self.items(batch.hist_items)), self.items(batch.items)

    def encode(self, batch: Batch, x: torch.Tensor | None = None,
               context: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Encoder output ``[B, C, hidden]``; ``x`` ``[B, C]`` is read only when score_input != "none".
        ``context``: this batch's ``context(batch)`` if the caller already computed it (DNR's
        generator reads it too, so the user state is encoded once per batch)."""
        user, item = self.context(batch) if context is None else context
        user, item = self.score_input(self.user_part(user), self.item_part(item), x, batch.mask)
        return self.encoder(self.input_mlp(user + item), batch.mask)

    def fused(self, h: torch.Tensor, x_late: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder output with the late score folded in: ``h + x_late * v`` with late_score
        (methods.md §6.12), ``h`` otherwise."""
        if self.late_score:
            if x_late is None:
                raise ValueError("late_score=True needs x_late, the score fused after the encoder")
            return h + x_late[..., None] * self.late_weight
        return h

    def head(self, h: torch.Tensor, x_late: torch.Tensor | None = None) -> torch.Tensor:
        """Per-candidate logits ``[B, C]`` from the encoder output; with late_score, ``x_late``
        ``[B, C]`` enters just before the final linear layer (:meth:`fused`)."""
        return self.out(self.fused(h, x_late)).squeeze(-1)

    # Backbone hooks (DNR wraps any backbone through encode/head and these two; PIER overrides them)
    def aux_loss(self, batch: Batch, h: torch.Tensor, logits: torch.Tensor,
                 x_late: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Training losses of the backbone beyond the per-candidate BCE (none for PRM)."""
        return {}

    def select(self, batch: Batch, h: torch.Tensor, logits: torch.Tensor, x_late: torch.Tensor | None) -> torch.Tensor:
        """The inference scores from the encoder output and the per-candidate logits (PRM: the
        logits themselves; the displayed list is their top-k)."""
        return logits.masked_fill(~batch.mask, -torch.inf)

    def score(self, batch: Batch) -> torch.Tensor:
        x = batch.scores if self.uses_retriever_score else None
        h = self.encode(batch, x)
        return self.select(batch, h, self.head(h, x), x)

    def loss(self, batch: Batch) -> "torch.Tensor | dict[str, torch.Tensor]":
        x = batch.scores if self.uses_retriever_score else None
        h = self.encode(batch, x)
        logits = self.head(h, x)
        # on the unmasked logits: -inf on a padded slot would turn BCE into NaN (Eq. 2)
        main = bce_loss(logits, batch.labels, batch.mask)
        aux = self.aux_loss(batch, h, logits, x)
        return {"bce": main, **aux} if aux else main


register_score_variants("prm", "PRM")
register_variant("prm-large", base="prm", groups=("large",), n_layers=6,
                 doc="PRM with 6 transformer layers: the 'larger PRM' of App. E.5")
