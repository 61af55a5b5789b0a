"""Shared encoders of the list rerankers (methods.md §1.4: one item table, one user-state encoder).

* :func:`item_table`: the item embedding table (``n_items + 1`` rows, row 0 is padding);
* :class:`ListEncoder`: a transformer over a list with learned position embeddings of the slot
  (the initial position for candidates), bidirectional or causal, padding masked;
* :class:`UserStateEncoder`: a causal :class:`ListEncoder` over the history (item embedding +
  feedback-label embedding), read out at the last real position and fused with a user-id
  embedding; rows with an empty history get a learned vector instead;
* :func:`mlp`: Linear-ReLU-Dropout stacks, and :func:`widths` to read their widths from a setting;
* :func:`candidate_inputs`: f_i = [e_i ; h_u], the per-candidate input of the list baselines;
* :func:`logged_slate`: the logged list of a request as candidate columns (the training target
  of the list generators: EGRerank's evaluator, NAR4Rec, DCDR, PIER).

Sequential baselines (SASRec, Caser, GRU4Rec) keep their own encoders; these blocks serve the
list rerankers so that they differ only in what the paper says they differ in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from benchmark.api import Batch, DataSpec
from benchmark.errors import ConfigError


def item_table(spec: DataSpec, dim: int) -> nn.Embedding:
    """Embeddings of items 1..n_items; item 0 is padding and stays the zero vector."""
    return nn.Embedding(spec.n_items + 1, dim, padding_idx=0)


def mlp(dims: Sequence[int], dropout: float) -> nn.Sequential:
    """``dims[0] -> ... -> dims[-1]``: Linear, then ReLU + Dropout between layers (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def blocked_attention(valid: torch.Tensor, causal: bool, n_heads: int) -> torch.Tensor | None:
    """Boolean attention mask ``[B * n_heads, L, L]`` (True = may not attend) for
    ``nn.TransformerEncoder``, or None when nothing is blocked.

    Every query may always attend to itself: a padded query (or a causal query before the first
    real key) would otherwise have no key left, and its softmax over nothing gives NaN, which
    then leaks into real positions through the next layer's values.
    """
    if not causal and bool(valid.all()):
        return None  # lets PyTorch use its unmasked fast attention kernels
    length = valid.shape[1]
    allowed = valid[:, None, :].expand(-1, length, -1)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=valid.device)
    return (~allowed).repeat_interleave(n_heads, dim=0)


class ListEncoder(nn.Module):
    """Transformer encoder over a list of ``length`` slots ``[B, L, hidden] -> [B, L, hidden]``.

    ``positional``: add a learned embedding of the slot index (for candidates: the initial,
    retriever-order position, methods.md §3.3). Without it and with ``causal=False`` the encoder
    is permutation-equivariant (SetRank-style). Pre-LayerNorm layers with a final LayerNorm keep
    deeper stacks (``prm-large``) trainable at the same learning rate.
    """

    def __init__(self, length: int, hidden: int, n_layers: int, n_heads: int, ffn: int, dropout: float,
                 causal: bool = False, positional: bool = True):
        super().__init__()
        self.causal = causal
        self.n_heads = n_heads
        self.positions = nn.Embedding(length, hidden) if positional else None
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, dim_feedforward=ffn, dropout=dropout,
                                           batch_first=True, norm_first=True)
        # nested tensors only exist for post-LN layers; asking for them just warns
        self.layers = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, L, hidden]``; ``valid``: ``[B, L]`` bool, False for padded slots."""
        if self.positions is not None:
            x = x + self.positions.weight[: x.shape[1]]
        return self.layers(self.dropout(x), mask=blocked_attention(valid, self.causal, self.n_heads))


class UserStateEncoder(nn.Module):
    """User state ``[B, hidden]`` from the history and the user id (methods.md §1.4).

    Each history step is its item embedding plus an embedding of its feedback label; a causal
    :class:`ListEncoder` runs over the left-padded history and is read out at the last slot
    (the most recent real interaction). That read-out is concatenated with a user-id embedding
    and projected back to ``hidden``. Requests with ``hist_len == 0`` use a learned
    "no history" vector in place of the read-out.
    """

    def __init__(self, spec: DataSpec, hidden: int, n_layers: int, n_heads: int, ffn: int, dropout: float):
        super().__init__()
        self.feedback = nn.Embedding(2, hidden)
        self.users = nn.Embedding(spec.n_users, hidden)
        self.empty_history = nn.Parameter(torch.zeros(hidden))
        self.encoder = ListEncoder(spec.history_len, hidden, n_layers, n_heads, ffn, dropout, causal=True)
        self.fuse = nn.Linear(2 * hidden, hidden)

    def forward(self, batch: Batch, hist_emb: torch.Tensor) -> torch.Tensor:
        """``hist_emb``: ``[B, H, hidden]`` embeddings of ``batch.hist_items`` from the model's item table."""
        length = batch.hist_items.shape[1]
        # histories are left-padded: slot j is real iff it lies in the last hist_len slots
        valid = torch.arange(length, device=hist_emb.device) >= length - batch.hist_len[:, None]
        steps = hist_emb + self.feedback(batch.hist_labels.long())
        last = self.encoder(steps, valid)[:, -1]
        last = torch.where((batch.hist_len > 0)[:, None], last, self.empty_history)
        return self.fuse(torch.cat([last, self.users(batch.user)], dim=-1))


def candidate_inputs(batch: Batch, items: nn.Embedding, user_encoder: "UserStateEncoder") -> torch.Tensor:
    """``[B, C, 2 * hidden]``: each candidate's item embedding beside the user state,
    f_i = [e_{c_i} ; h_u] (methods.md §1.4), from the model's own item table and user encoder."""
    user = user_encoder(batch, items(batch.hist_items))
    item = items(batch.items)
    return torch.cat([item, user[:, None, :].expand_as(item)], dim=-1)


def widths(text: str, name: str) -> tuple[int, ...]:
    """Hidden-layer widths of an MLP written as ``"512-256-128"`` (a string, so that the setting
    stays one TOML/``--set`` value); ``name`` is the hyper-parameter named in the error."""
    try:
        out = tuple(int(part) for part in text.split("-"))
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise ConfigError(f"{name} must be positive widths joined by '-', e.g. '512-256-128', not {text!r}")
    return out


def dcg_weights(k: int, device=None) -> torch.Tensor:
    """w_j = 1 / log2(j + 1) for positions j = 1..k (DCDR's list value, EGRerank's item reward)."""
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float32))


def logged_slate(batch: Batch, k: int, positives_first: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(columns [B, k], labels [B, k])``: the request's logged (exposed) items as candidate
    columns, a **training target only** (it reads ``batch.exposed`` and ``batch.labels``).

    The lists do not keep the order in which the window's 6 items were consumed (and in ML-1M or
    Amazon a rating's timestamp is not a display position), so the logged list is ordered here:
    with ``positives_first`` the clicked/positive exposed items come first, then the other
    exposed ones (the order a perfect reranker would display; the generators then learn to put
    positives on top), each group in initial (retriever) order; without it, initial order only.
    A request with fewer than k exposed items is filled with its best-ranked fillers (label 0)."""
    width = batch.items.shape[1]
    initial = torch.arange(width, device=batch.items.device).expand_as(batch.items)
    key = (~batch.exposed).long() * (4 * width) + initial + (~batch.mask).long() * (8 * width)
    if positives_first:
        key = key + (batch.labels <= 0.5).long() * (2 * width)
    columns = torch.argsort(key, dim=1, stable=True)[:, :k]
    return columns, batch.labels.gather(1, columns)
