"""SetRank (Pang et al., SIGIR 2020; methods.md §3.2): a permutation-equivariant ranker over the
candidate set.

Inputs it sees: the candidate item ids and the user state h_u of the shared history encoder
(methods.md §1.4; the original, an IR model, has no user). By default **no order at all**: the
scores of a permuted list are the permuted scores (a test checks it). With ``ordinal=True`` it
adds a learned embedding of each candidate's initial (retriever) position, the paper's
SetRank_init variant. It never reads ``batch.scores``.

Per request, with f_i = [e_{c_i} ; h_u]:

    X_0 = W f_i + b  (+ P_i, the initial-position embedding, only with ``ordinal``)
    X_l = MSAB(X_{l-1}) = MAB(X, X)                               (block = "msab", default)
          or IMSAB(X_{l-1}) = MAB(X, MAB(I, X)), I: m learned inducing points  (block = "imsab")
    logit_i = rFF(X_L)_i

with the multi-head attention block of the paper, post-LayerNorm as there:

    MAB(Q, K) = LN(H + rFF(H)),   H = LN(Q + Multihead(Q, K, K))

trained with the listwise attention-rank loss (:func:`baselines.losses.attention_rank_loss`, as
DLCM; lists without a positive are left out). Padded candidates are masked as keys, so they never
change a real candidate's score. The MAB is written here rather than taken from
:class:`baselines.blocks.ListEncoder`, which is pre-LN, self-attention only and cannot attend
from inducing points.

Defaults (methods.md §3.2 adaptation): d = 128, 2 blocks, 4 heads, rFF width 128, m = 20
inducing points (ReChorus' default) when ``block="imsab"``.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import UserStateEncoder, blocked_attention, candidate_inputs, item_table, mlp
from baselines.losses import attention_rank_loss, lists_with_a_positive

BLOCKS = ("msab", "imsab")


class MAB(nn.Module):
    """Multi-head attention block ``MAB(Q, K) = LN(H + rFF(H))``, ``H = LN(Q + MHA(Q, K, K))``."""

    def __init__(self, hidden: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.norm_attention = nn.LayerNorm(hidden)
        self.rff = mlp((hidden, ffn, hidden), dropout)
        self.norm_rff = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``q`` ``[B, Lq, d]``, ``k`` ``[B, Lk, d]``; masks as in ``nn.MultiheadAttention`` (True = blocked)."""
        a, _ = self.attention(q, k, k, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)
        h = self.norm_attention(q + self.dropout(a))
        return self.norm_rff(h + self.dropout(self.rff(h)))


class SetBlock(nn.Module):
    """MSAB (``inducing == 0``) or IMSAB with ``inducing`` learned points."""

    def __init__(self, hidden: int, n_heads: int, ffn: int, dropout: float, inducing: int):
        super().__init__()
        self.n_heads = n_heads
        self.mab = MAB(hidden, n_heads, ffn, dropout)
        self.points = nn.Parameter(torch.randn(inducing, hidden) * hidden ** -0.5) if inducing else None
        self.induce = MAB(hidden, n_heads, ffn, dropout) if inducing else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.points is None:
            # every query attends to the real candidates (and itself, so a padded query is defined)
            return self.mab(x, x, attn_mask=blocked_attention(valid, causal=False, n_heads=self.n_heads))
        # a row without any real candidate attends to all slots (its output is masked anyway)
        blocked = ~valid & valid.any(dim=1, keepdim=True)
        h = self.induce(self.points.expand(x.shape[0], -1, -1), x, key_padding_mask=blocked)
        return self.mab(x, h)


@register("setrank", groups=("baselines",))
class SetRank(Reranker):
    """SetRank: permutation-equivariant set attention (MSAB/IMSAB) over the candidates, attention-rank loss."""

    family = "list-refinement"
    micro_batchable = True  # attention-rank loss per list; slices weighted by their lists with a positive

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_blocks: int = 2, n_heads: int = 4, ffn: int = 128,
                 block: str = "msab", n_inducing: int = 20, ordinal: bool = False, dropout: float = 0.1,
                 user_layers: int = 1):
        """``n_heads``/``ffn`` serve both the set blocks and the shared user-state encoder."""
        super().__init__(spec)
        if block not in BLOCKS:
            raise ConfigError(f"block must be one of {', '.join(BLOCKS)}, not {block!r}")
        if block == "imsab" and n_inducing < 1:
            raise ConfigError(f"block='imsab' needs n_inducing >= 1, not {n_inducing}")
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.project = nn.Linear(2 * hidden, hidden)
        self.ordinal = nn.Embedding(spec.list_len, hidden) if ordinal else None
        self.dropout = nn.Dropout(dropout)
        inducing = n_inducing if block == "imsab" else 0
        self.blocks = nn.ModuleList(SetBlock(hidden, n_heads, ffn, dropout, inducing) for _ in range(n_blocks))
        self.head = mlp((hidden, hidden, 1), dropout)

    def logits(self, batch: Batch) -> torch.Tensor:
        x = self.project(candidate_inputs(batch, self.items, self.user_encoder))
        if self.ordinal is not None:
            x = x + self.ordinal.weight[: x.shape[1]]
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, batch.mask)
        return self.head(x).squeeze(-1)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.logits(batch).masked_fill(~batch.mask, -torch.inf)

    def loss(self, batch: Batch) -> torch.Tensor:
        return attention_rank_loss(self.logits(batch), batch.labels, batch.mask)

    def slice_weight(self, batch: Batch) -> float:
        return float(lists_with_a_positive(batch.labels, batch.mask))  # the loss's mean is over these
