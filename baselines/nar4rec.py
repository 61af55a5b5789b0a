"""NAR4Rec, non-autoregressive generative reranking (Ren et al., KDD 2024; methods.md §4.3).

Inputs it sees: the candidate item ids in the initial (retriever) order (column j = initial
position j, through position embeddings as in PRM), the user state h_u of the shared history
encoder (methods.md §1.4: history items, their feedback labels, user id). It never reads
``batch.scores``; ``batch.labels``/``batch.exposed`` only through the training target
:func:`baselines.blocks.logged_slate`.

Matching model (the generator; all m = k = 6 positions in one forward pass):

    f_i    = MLP([e_{c_i} ; h_u])                                  (candidate input, 2d -> d -> d)
    c_i    = ListEncoder(f + pe_i)_i                               (bidirectional, initial-position emb.)
    p_j    = TransformerDecoder(q_j ; c)_j,  j = 1..m              (learned position queries q_j:
                                                                    self-attention among the m
                                                                    queries, no causal mask, and
                                                                    cross-attention to the real c_i)
    P[j,i] = softmax_{i real}(<p_j, c_i> / sqrt(d))                (padded candidates get P = 0)

The position queries are the "shared position embeddings" of the paper: one learned vector per
output slot, shared by every request, so the dynamic vocabulary (the request's candidates) is
handled by the dot product with c_i rather than by an output layer over item ids.

Training target (methods.md §4.3): the logged list x = ``logged_slate(batch, k)`` (the exposed
items, positives first, then the other exposed ones, each group in initial order; fillers if a
request has fewer than k exposed items). Each target token (j, x_j) is either a likelihood token
(-log P[j, x_j]) or an unlikelihood token (-log(1 - P[j, x_j])):

* ``unlikelihood="sequence"`` (default, the paper's *sequence-level* unlikelihood): a logged list
  with at least ``seq_threshold`` positive items is a feasible ("positive") sequence and all its
  tokens are likelihood tokens; otherwise all its tokens are unlikelihood tokens. The paper's
  threshold is not recoverable; the default 1 ("the user liked something in the window") keeps
  most lists as positive sequences on explicit-feedback data.
* ``unlikelihood="token"``: a token is a likelihood token iff its own target item is positive.

The generation loss is the mean over the valid target tokens of the batch (= Σ_j / m per
request, then averaged), reported as two parts, ``likelihood`` and ``unlikelihood``, whose sum it
is. With implicit feedback (Amazon: every exposed item is positive) the sequence form has no
negative sequences at all (unless ``seq_threshold`` exceeds a request's exposed count), so it is
pure likelihood training; the token form has none either, except for the label-0 fillers of
requests with fewer than k exposed items.

Contrastive loss on the candidate representations (the paper adds one so that items stay
distinguishable under the dot-product matching and so that the decoding penalty below has
meaningful similarities; its exact form is not recoverable). We use the margin form of SimCTG
(Su et al., 2022), the training objective that contrastive search (our decoding) was designed
with: over all ordered pairs (i, k), i != k, of real candidates of a list,

    L_cl = mean_{pairs} max(0, margin - s(c_i, c_i) + s(c_i, c_k)) = mean max(0, s(c_i, c_k) - (1 - margin))

(s = cosine, so s(c_i, c_i) = 1; ``contrastive_margin`` 0.5 as SimCTG), weighted by
``contrastive_loss_weight`` (0.1). It pushes pairwise cosines of a list's encodings below
1 - margin and costs one [C, C] similarity per list.

Inference = contrastive decoding (contrastive search): one pass gives P and c; then for
j = 1..m pick the unchosen real candidate maximising

    (1 - a) · P[j, i] - a · max_{k<j} cos(c_i, c_{x_k})        (no penalty at j = 1)

with a = ``contrastive_weight`` (0.1; not recoverable). Ties go to the lower initial position.
``score`` = ``order_scores(order, mask, rest = max_j P[j, i])``: the decoded 6 on top, the other
candidates ordered by their best position probability (``rank_derived_auc``: AUC is rank-derived).

Deviations / choices where the paper is silent:

* No evaluator: the paper can decode several sequences and pick one with a sequence evaluator;
  here the single contrastive decode is the output (methods.md §4.3 lists the evaluator as
  optional). DNR lists NAR4Rec among the generator-evaluator methods, hence the family.
* d = 128, candidate encoder 2 layers, decoder 2 layers, 4 heads, FFN 128 (Kuaishou
  conventions, methods.md §1.4); the paper's layer counts are not recoverable. The decoder is
  pre-LayerNorm with a final LayerNorm, like :class:`~baselines.blocks.ListEncoder`.
* The logit scale 1/sqrt(d) (an attention-style temperature) is ours.
* The logged order is the "positives first" order of ``logged_slate`` (our lists keep no display
  order, methods.md §4.3 pitfall); the generator therefore learns to put positives on top.
  Targets are always exposed items, so it also learns "which candidates were exposed".
"""
from __future__ import annotations

import math

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker, order_scores
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import ListEncoder, UserStateEncoder, candidate_inputs, item_table, logged_slate, mlp

UNLIKELIHOOD_MODES = ("sequence", "token")


def target_is_positive(labels: torch.Tensor, valid: torch.Tensor, mode: str, threshold: int) -> torch.Tensor:
    """``[B, m]`` bool: which target tokens get likelihood (True) or unlikelihood (False).
    ``labels`` ``[B, m]`` are the target items' labels, ``valid`` marks real target tokens."""
    positive = (labels > 0.5) & valid
    if mode == "token":
        return positive
    sequence = positive.sum(dim=1, keepdim=True) >= threshold
    return sequence.expand_as(positive)


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, kept finite when p rounds to 1."""
    return torch.log(-torch.expm1(log_p.clamp(max=-1e-6)))


def generation_loss(log_probs: torch.Tensor, columns: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                    mode: str, threshold: int) -> dict[str, torch.Tensor]:
    """Likelihood / unlikelihood parts (module doc). ``log_probs`` ``[B, m, C]`` = log P,
    ``columns`` ``[B, m]`` the target column x_j per position, ``labels`` their labels, ``valid``
    ``[B, m]`` the real target tokens. Each part is a sum over its tokens divided by the number
    of valid tokens, so the two parts add up to the per-token mean."""
    log_target = log_probs.gather(2, columns[..., None]).squeeze(-1)
    positive = target_is_positive(labels, valid, mode, threshold)
    zero = torch.zeros_like(log_target)
    like = torch.where(valid & positive, -log_target, zero)
    unlike = torch.where(valid & ~positive, -log1mexp(torch.where(valid, log_target, zero - 1.0)), zero)
    n = valid.sum().clamp(min=1)
    return {"likelihood": like.sum() / n, "unlikelihood": unlike.sum() / n}


def margin_contrastive_loss(reps: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """SimCTG-style margin loss over all ordered pairs of distinct real candidates (module doc)."""
    unit = nn.functional.normalize(reps, dim=-1)
    sim = unit @ unit.transpose(1, 2)
    pairs = mask[:, :, None] & mask[:, None, :]
    pairs = pairs & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    hinge = torch.relu(margin - 1.0 + sim)
    return torch.where(pairs, hinge, torch.zeros_like(hinge)).sum() / pairs.sum().clamp(min=1)


def contrastive_decode(probs: torch.Tensor, reps: torch.Tensor, mask: torch.Tensor, weight: float) -> torch.Tensor:
    """Contrastive search over the m positions of ``probs`` ``[B, m, C]`` (module doc): the order
    ``[B, m]`` of distinct columns. ``reps`` ``[B, C, d]`` give the cosine penalty; with
    ``weight`` 0 this is the greedy "best unchosen candidate per position". A request with fewer
    than m real candidates is filled with its padded columns (they come out ``-inf`` in
    ``order_scores``)."""
    unit = nn.functional.normalize(reps, dim=-1)
    sim = unit @ unit.transpose(1, 2)  # [B, C, C]
    batch, m, width = probs.shape
    chosen = torch.zeros(batch, width, dtype=torch.bool, device=probs.device)
    penalty = torch.zeros(batch, width, device=probs.device)  # max cosine to the chosen so far
    rows = torch.arange(batch, device=probs.device)
    order = []
    for j in range(m):
        value = (1.0 - weight) * probs[:, j] - (weight * penalty if j > 0 else 0.0)
        # value lies in [-1, 1]: padded columns only once no real one is left, chosen ones never
        value = torch.where(mask, value, torch.full_like(value, -2.0)).masked_fill(chosen, -torch.inf)
        pick = value.argmax(dim=1)  # first maximum: ties go to the lower initial position
        order.append(pick)
        chosen[rows, pick] = True
        near = sim[rows, pick]  # [B, C]: cosine of every candidate to the pick
        penalty = near if j == 0 else torch.maximum(penalty, near)
    return torch.stack(order, dim=1)


@register("nar4rec", groups=("baselines",))
class NAR4Rec(Reranker):
    """NAR4Rec: matching model (candidate encoder + m position queries) decoding all slots in one pass; (un)likelihood + contrastive loss; contrastive decoding."""

    family = "generator-evaluator"
    rank_derived_auc = True
    micro_batchable = True  # likelihood parts: k tokens per full list; contrastive: C(C-1) pairs per list

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 2, decoder_layers: int = 2,
                 n_heads: int = 4, ffn: int = 128, dropout: float = 0.1, user_layers: int = 1,
                 unlikelihood: str = "sequence", seq_threshold: int = 1, contrastive_loss_weight: float = 0.1,
                 contrastive_margin: float = 0.5, contrastive_weight: float = 0.1):
        """``n_layers``: candidate-encoder layers; ``decoder_layers``: position-decoder layers;
        ``n_heads``/``ffn`` serve both and the shared user-state encoder; ``contrastive_weight``
        is the decoding weight a, ``contrastive_loss_weight`` the training weight of L_cl."""
        super().__init__(spec)
        if unlikelihood not in UNLIKELIHOOD_MODES:
            raise ConfigError(f"unlikelihood must be one of {', '.join(UNLIKELIHOOD_MODES)}, not {unlikelihood!r}")
        if not 0 <= seq_threshold <= spec.k:
            raise ConfigError(f"seq_threshold must be between 0 and k = {spec.k} positive items, not {seq_threshold}")
        if not 0.0 <= contrastive_weight <= 1.0:
            raise ConfigError(f"contrastive_weight (decoding weight a) must lie in [0, 1], not {contrastive_weight}")
        if not contrastive_loss_weight >= 0.0:
            raise ConfigError(f"contrastive_loss_weight must be >= 0, not {contrastive_loss_weight}")
        if not 0.0 <= contrastive_margin <= 2.0:
            raise ConfigError(f"contrastive_margin must lie in [0, 2] (cosines lie in [-1, 1]), not {contrastive_margin}")
        if min(hidden, n_layers, decoder_layers, n_heads, ffn, user_layers) < 1:
            raise ConfigError("hidden, n_layers, decoder_layers, n_heads, ffn and user_layers must all be >= 1")
        if hidden % n_heads:
            raise ConfigError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), not {dropout}")
        self.unlikelihood = unlikelihood
        self.seq_threshold = seq_threshold
        self.contrastive_loss_weight = contrastive_loss_weight
        self.contrastive_margin = contrastive_margin
        self.contrastive_weight = contrastive_weight
        self.scale = 1.0 / math.sqrt(hidden)
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.input_mlp = mlp((2 * hidden, hidden, hidden), dropout)
        self.encoder = ListEncoder(spec.list_len, hidden, n_layers, n_heads, ffn, dropout, causal=False)
        self.queries = nn.Parameter(torch.randn(spec.k, hidden) * hidden ** -0.5)
        layer = nn.TransformerDecoderLayer(hidden, n_heads, dim_feedforward=ffn, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers, norm=nn.LayerNorm(hidden))

    def forward_parts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of the matching model: ``(log P [B, m, C], candidate encodings c [B, C, d])``.
        Padded candidates have log P = -inf (P = 0); every row of P sums to 1 over the real ones."""
        reps = self.encoder(self.input_mlp(candidate_inputs(batch, self.items, self.user_encoder)), batch.mask)
        # a request without any real candidate attends to every slot (its output is masked anyway)
        blocked = ~batch.mask & batch.mask.any(dim=1, keepdim=True)
        queries = self.queries.expand(reps.shape[0], -1, -1)
        positions = self.decoder(queries, reps, memory_key_padding_mask=blocked)
        logits = (positions @ reps.transpose(1, 2)) * self.scale  # [B, m, C]
        logits = logits.masked_fill(blocked[:, None, :], -torch.inf)
        return torch.log_softmax(logits, dim=-1), reps

    def probabilities(self, batch: Batch) -> torch.Tensor:
        """P ``[B, m, C]`` (module doc)."""
        return self.forward_parts(batch)[0].exp()

    def decode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order [B, m], P [B, m, C])`` from one forward pass and contrastive search."""
        log_probs, reps = self.forward_parts(batch)
        probs = log_probs.exp()
        return contrastive_decode(probs, reps, batch.mask, self.contrastive_weight), probs

    def score(self, batch: Batch) -> torch.Tensor:
        order, probs = self.decode(batch)
        return order_scores(order, batch.mask, rest=probs.amax(dim=1))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        log_probs, reps = self.forward_parts(batch)
        columns, labels = logged_slate(batch, self.spec.k)
        valid = batch.mask.gather(1, columns)
        parts = generation_loss(log_probs, columns, labels, valid, self.unlikelihood, self.seq_threshold)
        if self.contrastive_loss_weight > 0:
            parts["contrastive"] = self.contrastive_loss_weight * margin_contrastive_loss(
                reps, batch.mask, self.contrastive_margin)
        return parts
