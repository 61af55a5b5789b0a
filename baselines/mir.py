"""MIR, Multi-level Interaction Reranking (Xi et al., SIGIR 2022; methods.md §3.4).

Inputs it sees: the candidate item ids (as a set: **no order**; permuting the list permutes the
scores), the history (item ids, their feedback labels and their recency, i.e. slot order) and
the user id (as the "user profile" that sets the decay rate). It has its own history model, the
Bi-LSTM below, instead of the shared user-state encoder (methods.md §1.4: a model's own history
encoder *is* the model); it shares only the item table's form. It never reads ``batch.scores``.

1. intra-set: one multi-head self-attention over the candidate embeddings e_i (1 head by
   default, as the official code), concatenated with e_i: v_i = [e_i ; SA(e)_i]   (2d);
2. intra-list: a Bi-LSTM over the real history steps (item embedding + feedback-label
   embedding, as the shared encoder builds them), concatenated with the steps:
   q_j = [BiLSTM_j ; x_j]   (2·lstm_hidden + d);
3. set-to-list interaction (SLAttention): the item-level bilinear affinity
   A_ji = q_j · W_b · v_i, with personalised time decay
   C = tanh(A ⊙ exp(-θ_u Δt_j) + A), θ_u = softplus(MLP(user-id embedding)) >= 0,
   then co-attention gives every candidate i a summary of the candidates and of the history:
       m_i = Σ_j (w_q·q_j) C_ji,               v̂_i = Σ_k softmax_k(tanh(w_v·v_i + m_k)) v_k
       n_j = Σ_k C_jk,                          q̂_i = Σ_j softmax_j(tanh(w_q·q_j + (w_v·v_i) n_j)) q_j
   with vector projections w_v, w_q (ReChorus' permutation-invariant fix; the official code
   projects to as many outputs as the list is long, which ties the model to C and to slots);
4. logit_i = MLP(LN([e_i ; v̂_i ; q̂_i])), MLP 500-200-80-1 (ReLU, dropout), pointwise BCE.

Padded candidates and padded history slots are masked out of every attention, sum and softmax;
an empty history (``hist_len`` 0) gives q̂_i = 0.

Deviations from the paper, forced by our data or chosen:

* **Time.** ``Batch`` carries no timestamps per history item, only their order. Δt_j is the
  slot's recency: Δt_j = log2(1 + r_j), r_j = 0 for the most recent interaction, 1 for the one
  before, ... (the official code uses log2 of the time gap in seconds). The decay rate θ_u comes
  from a 2-layer MLP over the user-id embedding (we have no profile features); softplus keeps it
  non-negative so exp(-θ_u Δt) is a decay in (0, 1] (the reference implementations use a leaky
  ReLU there).
* **No feature-level interaction.** The paper's second affinity term, bilinear between the
  per-field embeddings of each (history item, candidate) pair pooled by a strided convolution,
  needs multi-field item features; our items are ID-only, so only the item-level affinity exists
  (ReChorus leaves it out too).
* d = 128 (DNR uses 128 for every model), Bi-LSTM 64 per direction (official hidden 64).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmark.api import Batch, DataSpec, Reranker, bce_loss
from benchmark.registry import register
from baselines.blocks import blocked_attention, item_table, mlp, widths


def masked_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``valid`` (broadcastable bool); all-zero weights
    where nothing is valid."""
    valid = valid.expand_as(logits)
    z = torch.where(valid, logits, torch.full_like(logits, -torch.inf))
    z = torch.where(valid.any(dim=-1, keepdim=True), z, torch.zeros_like(z))
    return torch.softmax(z, dim=-1) * valid


def history_recency(hist_len: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(valid [B, H], recency [H])`` of left-padded histories: slot H-1 is the most recent
    interaction (recency 0), slot H-2 the one before (1), ..."""
    slots = torch.arange(length, device=hist_len.device)
    return slots >= length - hist_len[:, None], (length - 1 - slots).to(torch.float32)


@register("mir", groups=("baselines",))
class MIR(Reranker):
    """MIR: intra-set attention, Bi-LSTM history, set-to-list co-attention with personalised time decay, BCE."""

    family = "list-refinement"
    micro_batchable = True  # per-candidate BCE, nothing across requests

    def __init__(self, spec: DataSpec, *, hidden: int = 128, lstm_hidden: int = 64, n_heads: int = 1,
                 decay_hidden: int = 32, layers: str = "500-200-80", dropout: float = 0.1):
        """``layers``: widths of the final MLP (official 500-200-80)."""
        super().__init__(spec)
        self.n_heads = n_heads
        self.items = item_table(spec, hidden)
        self.feedback = nn.Embedding(2, hidden)
        self.users = nn.Embedding(spec.n_users, hidden)
        self.dropout = nn.Dropout(dropout)
        self.intra_set = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.intra_list = nn.LSTM(hidden, lstm_hidden, batch_first=True, bidirectional=True)
        v_dim, q_dim = 2 * hidden, 2 * lstm_hidden + hidden
        self.affinity = nn.Parameter(torch.randn(q_dim, v_dim) * (q_dim * v_dim) ** -0.5)  # W_b
        self.decay_rate = mlp((hidden, decay_hidden, 1), 0.0)
        self.w_v = nn.Linear(v_dim, 1, bias=False)
        self.w_q = nn.Linear(q_dim, 1, bias=False)
        final = hidden + v_dim + q_dim
        self.norm = nn.LayerNorm(final, elementwise_affine=False)
        self.mlp = mlp((final, *widths(layers, "layers"), 1), dropout)

    def encode_history(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q [B, H, 2·lstm_hidden + d], valid [B, H])``: the Bi-LSTM runs over the real steps
        only (rotated to the front and packed); padded slots are zero."""
        steps = self.dropout(self.items(batch.hist_items) + self.feedback(batch.hist_labels.long()))
        length, n = steps.shape[1], batch.hist_len
        valid, _ = history_recency(n, length)
        slots = torch.arange(length, device=steps.device)
        # left-padded -> right-padded: front position p holds slot (p + H - n) mod H, and back
        front = (slots + (length - n)[:, None]) % length
        back = (slots + n[:, None]) % length
        packed = pack_padded_sequence(steps.gather(1, front[..., None].expand_as(steps)), n.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.intra_list(packed)[0], batch_first=True, total_length=length)
        out = out.gather(1, back[..., None].expand(-1, -1, out.shape[-1]))
        return torch.cat([out, steps], dim=-1) * valid[..., None], valid

    def decay(self, batch: Batch, length: int) -> torch.Tensor:
        """``exp(-θ_u Δt_j)`` ``[B, H]`` with Δt_j = log2(1 + recency_j)."""
        _, recency = history_recency(batch.hist_len, length)
        theta = nn.functional.softplus(self.decay_rate(self.users(batch.user)))  # [B, 1]
        return torch.exp(-theta * torch.log2(1 + recency))

    def logits(self, batch: Batch) -> torch.Tensor:
        mask = batch.mask
        item = self.dropout(self.items(batch.items))
        attended, _ = self.intra_set(item, item, item, need_weights=False,
                                     attn_mask=blocked_attention(mask, causal=False, n_heads=self.n_heads))
        v = torch.cat([item, attended], dim=-1)                                 # [B, C, 2d]
        q, hist_valid = self.encode_history(batch)                              # [B, H, q_dim]
        a = (q @ self.affinity) @ v.transpose(1, 2)                              # A_ji, [B, H, C]
        c = torch.tanh(a * self.decay(batch, q.shape[1])[..., None] + a)
        c = c * (hist_valid[..., None] & mask[:, None, :])                     # [B, H, C]
        sv, sq = self.w_v(v).squeeze(-1), self.w_q(q).squeeze(-1)              # [B, C], [B, H]
        m = torch.einsum("bh,bhc->bc", sq, c)
        v_hat = masked_softmax(torch.tanh(sv[:, :, None] + m[:, None, :]), mask[:, None, :]) @ v
        n = c.sum(dim=2)                                                        # [B, H]
        q_hat = masked_softmax(torch.tanh(sq[:, None, :] + sv[:, :, None] * n[:, None, :]),
                               hist_valid[:, None, :]) @ q
        return self.mlp(self.norm(torch.cat([item, v_hat, q_hat], dim=-1))).squeeze(-1)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.logits(batch).masked_fill(~batch.mask, -torch.inf)

    def loss(self, batch: Batch) -> torch.Tensor:
        return bce_loss(self.logits(batch), batch.labels, batch.mask)
