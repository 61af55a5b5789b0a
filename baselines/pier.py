"""PIER (Shi et al., KDD 2023; methods.md §4.2): permutation generation, SimHash-based selection
of the most promising permutations (FPSM) and a context-aware evaluator (OCPM) that picks the
displayed list, trained end to end; and its score-and-sort reduction ``pier-lite``.

Inputs it sees: the candidate item ids in initial (retriever) order (position embeddings, as
PRM), the user state from the shared history encoder, and the history itself as the user's
past permutations (below). It never reads ``batch.scores`` unless a score variant or DNR asks
for it (``score_input`` / ``late_score``, inherited from PRM, methods.md §7 and §6.12).

Blocks, per request (hidden d = 128):

* **Candidate encoder** (the Kuaishou re-implementation's PIER body, methods.md §4.2): PRM's
  ``encode`` over the 50 candidates, ``H = ListEncoder(MLP(LN(W_u h_u) + LN(W_e e_i)) + p_i)``,
  and a per-candidate head ``s_i = w · H_i + b`` trained with BCE on z (Eq. 2). These item
  scores drive the permutation generator; DNR's denoising losses and the score variants attach
  here, and ``H`` (with the late score folded in) is what OCPM reads, so x reaches OCPM too.
* **Permutation generator**: P permutations of k = 6 items from the ``pool`` best candidates by
  s: the greedy top-6, and P - 1 Plackett–Luce samples ``top-6 of (s_i + Gumbel)`` over the pool
  (the paper's generator is not specified; this one covers the neighbourhood of the greedy list
  with swaps and replacements of likely items, as methods.md's adaptation suggests).
* **FPSM** (fine-grained permutation selection): a permutation's embedding is
  ``g(π) = Σ_j ρ_j ⊙ W_f (e_{π_j} + f_{y_j})`` (ρ_j learned per slot, so the order matters; f a
  feedback embedding: the hoped-for click y = 1 for a candidate permutation, the logged click
  for a history one) and its SimHash code ``sign(R g(π))`` with ``hash_bits`` learned hyperplanes
  R. The user's history permutations are the consecutive 6-item chunks of the history (most
  recent chunk first, age a = 0, 1, ...), the user's past slates in our window protocol. The
  similarity of a candidate permutation is the time-decayed mean code agreement
  ``sim(π) = Σ_a γ^a (1 - 2 Ham(π, h_a) / bits) / Σ_a γ^a`` over the real chunks; the ``keep``
  most similar permutations go on to OCPM. Hashing is not differentiable, so training uses
  ``tanh`` in place of ``sign`` (methods.md §4.2 pitfalls).
* **OCPM** (omnidirectional context-aware prediction): for a permutation, each item's state
  ``H_{π_j} + q_j`` (q_j: an embedding of its slot in the permutation) passes an omnidirectional
  (bidirectional) attention layer over the permutation's 6 items, and a time-aware attention
  over the history (query: the item state; keys: history item + feedback + recency embeddings);
  an MLP on both gives the item's click logit at that slot. Permutation value = Σ_j pCTR_j.
* **Losses** (end to end, one optimiser step): BCE of s on z; OCPM's BCE over the items of
  ``train_permutations`` generated permutations (the greedy top-6 and Plackett–Luce samples, as
  at inference; labels from z, fillers 0, as the metrics count them); and FPSM's comparative loss
  over the same permutations, weighted ``fpsm_weight``: a contrastive cross-entropy of
  softmax(FPSM similarity / τ_f) with OCPM's preferred permutation (the arg-max of its detached
  values) as the positive (``fpsm_teacher="best"``, methods.md §4.2).
  ``ocpm_logged=True`` puts the logged list (the exposed items in initial order, with their
  labels) in place of the greedy permutation in OCPM's training set, as the PIER paper trains OCPM
  on displayed permutations. It is off by default: in our window protocol that list is the one
  permutation that holds the request's positives, and its make-up (items spread over the 50
  initial positions, in ascending order) is one no generated permutation has, so OCPM learns to
  value that make-up instead of the items. In a KuaiRand run trained that way, at its best
  epoch (63), the within-request correlation of OCPM's values over 32 generated permutations was
  -0.02 with their clicks and +0.19 with their mean initial position, and OCPM's choice among
  them had a lower DCG than the greedy top-6 (0.295 against 0.349; NOTES, 2026-12-06).
  ``fpsm_teacher="soft"`` uses softmax(OCPM values)
  as a soft target instead; it teaches FPSM nothing here: the values of permutations drawn from
  the same 12-item pool differ by a fraction of a click, so that softmax is near-uniform and the
  loss stays at ln(P - 1) (0.1 · ln 7 = 0.195 in every epoch of a KuaiRand run).
* **Inference**: generate P permutations, keep the ``keep`` best by hashed similarity, display
  the one OCPM values most. ``score`` = :func:`~benchmark.api.order_scores` of that list over the
  candidate scores s, so the AUC is rank-derived for the chosen six (``rank_derived_auc``).

``search="lite"`` (slug ``pier-lite``) is the Kuaishou re-implementation's behaviour: score and
sort by s, no permutation search (methods.md §4.2 says DNR's PIER numbers most likely came from
it). Choices where the paper is silent or unrecoverable: P = 32, pool = 12, keep = 8, 32 hash
bits, γ = 0.9, 8 training permutations, τ_f = 0.1, fpsm_weight = 0.1, the arg-max teacher. Deviations: the history
permutations are history chunks (no logged display order), OCPM's time-aware unit uses
recency slots because the lists carry no per-interaction timestamps, and OCPM trains on generated
permutations, not on the logged list (``ocpm_logged``, above).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Batch, DataSpec, order_scores
from benchmark.errors import ConfigError
from benchmark.registry import register, register_variant
from baselines.blocks import logged_slate, mlp
from baselines.prm import PRM
from baselines.score_inputs import register_score_variants

SEARCHES = ("fpsm", "lite")
FPSM_TEACHERS = ("best", "soft")


def plackett_luce_permutations(logits: torch.Tensor, mask: torch.Tensor, n: int, pool: int, k: int,
                               generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, n, k]`` candidate columns: row 0 the greedy top-k of ``logits``; rows 1.. the top-k
    of ``logits + Gumbel`` over the ``pool`` best real candidates (Plackett–Luce samples; an item
    appears at most once per permutation). Padded candidates are never drawn."""
    logits = logits.detach().masked_fill(~mask, -torch.inf)
    pool = min(pool, logits.shape[1])
    top_values, top_columns = torch.topk(logits, pool, dim=1)  # sorted, ties by lower column
    greedy = top_columns[:, None, :k]
    if n == 1:
        return greedy
    uniform = torch.rand((logits.shape[0], n - 1, pool), generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))
    perturbed = top_values[:, None, :] + gumbel  # -inf (padded) stays -inf
    picks = torch.topk(perturbed, k, dim=2).indices
    sampled = top_columns[:, None, :].expand(-1, n - 1, -1).gather(2, picks)
    return torch.cat([greedy, sampled], dim=1)


@register("pier", groups=("baselines",))
class PIER(PRM):
    """PIER: permutation generation, SimHash selection (FPSM) and a context-aware permutation evaluator (OCPM)."""

    family = "generator-evaluator"
    rank_derived_auc = True
    micro_batchable = True  # BCE, OCPM BCE and FPSM NLL are all request means; no statistic across requests

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 2, n_heads: int = 4, ffn: int = 128,
                 dropout: float = 0.1, causal: bool = False, user_layers: int = 1, score_input: str = "none",
                 late_score: bool = False, search: str = "fpsm", permutations: int = 32, pool: int = 12,
                 keep: int = 8, train_permutations: int = 8, hash_bits: int = 32, time_decay: float = 0.9,
                 fpsm_tau: float = 0.1, fpsm_weight: float = 0.1, ocpm_weight: float = 1.0, sample_seed: int = 0,
                 fpsm_teacher: str = "best", ocpm_logged: bool = False):
        super().__init__(spec, hidden=hidden, n_layers=n_layers, n_heads=n_heads, ffn=ffn, dropout=dropout,
                         causal=causal, user_layers=user_layers, score_input=score_input, late_score=late_score)
        if search not in SEARCHES:
            raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, not {search!r}")
        if fpsm_teacher not in FPSM_TEACHERS:
            raise ConfigError(f"fpsm_teacher must be one of {', '.join(FPSM_TEACHERS)}, not {fpsm_teacher!r}")
        k = spec.k
        if not (1 <= keep <= permutations) or train_permutations < 1 or hash_bits < 1:
            raise ConfigError("PIER needs 1 <= keep <= permutations, train_permutations >= 1 and hash_bits >= 1")
        if not k <= pool <= spec.list_len:
            raise ConfigError(f"pool must lie in [k, list length] = [{k}, {spec.list_len}], not {pool}")
        if not 0 < time_decay <= 1 or fpsm_tau <= 0 or fpsm_weight < 0 or ocpm_weight < 0:
            raise ConfigError("PIER needs 0 < time_decay <= 1, fpsm_tau > 0 and non-negative loss weights")
        if spec.history_len < k:
            raise ConfigError(f"PIER reads the history as {k}-item permutations; history_len {spec.history_len} < {k}")
        self.search, self.k = search, k
        self.rank_derived_auc = search == "fpsm"
        self.n_perm, self.pool, self.keep, self.n_train_perm = permutations, pool, keep, train_permutations
        self.time_decay, self.fpsm_tau, self.fpsm_weight, self.ocpm_weight = time_decay, fpsm_tau, fpsm_weight, ocpm_weight
        self.sample_seed, self.fpsm_teacher, self.ocpm_logged = sample_seed, fpsm_teacher, ocpm_logged
        # OCPM
        self.slot = nn.Embedding(k, hidden)
        layer = nn.TransformerEncoderLayer(hidden, n_heads, dim_feedforward=ffn, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.omni = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.recency = nn.Embedding(spec.history_len, hidden)
        self.feedback = nn.Embedding(2, hidden)
        self.time_attention = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.ocpm_out = mlp((2 * hidden, hidden, 1), dropout)
        # FPSM
        self.fpsm_item = nn.Linear(hidden, hidden)
        self.fpsm_slot = nn.Parameter(torch.ones(k, hidden))
        self.hyperplanes = nn.Linear(hidden, hash_bits, bias=False)

    # ----------------------------------------------------------------------------- history
    def history_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of the time-aware attention ``[B, H, d]`` (item + feedback + recency slot, most
        recent = slot 0) and their padding mask ``[B, H]`` (True = padded)."""
        length = batch.hist_items.shape[1]
        recency = torch.arange(length - 1, -1, -1, device=batch.hist_items.device)  # left-padded: last = newest
        states = self.items(batch.hist_items) + self.feedback(batch.hist_labels.long()) + self.recency(recency)
        # a request without history attends to its newest (padding) slot rather than to nothing (NaN)
        padded = (recency[None, :] >= batch.hist_len[:, None]) & ~((batch.hist_len[:, None] == 0) & (recency == 0))
        return states, padded

    def history_permutations(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The user's past permutations: consecutive k-item chunks of the history, newest first.
        ``(items [B, A, k], clicks [B, A, k], real [B, A])``; a chunk is real when all its items are."""
        k, length = self.k, batch.hist_items.shape[1]
        n_chunks = length // k
        items = batch.hist_items[:, length - n_chunks * k:].flip(1).reshape(-1, n_chunks, k).flip(2)
        clicks = batch.hist_labels[:, length - n_chunks * k:].flip(1).reshape(-1, n_chunks, k).flip(2)
        real = torch.arange(n_chunks, device=items.device)[None, :] < (batch.hist_len // k)[:, None]
        return items, clicks, real

    # ----------------------------------------------------------------------------- FPSM
    def _signature(self, item_emb: torch.Tensor, clicks: torch.Tensor, hard: bool) -> torch.Tensor:
        """``[..., k, d]`` item embeddings + clicks -> ``[..., bits]`` code (sign) or its tanh relaxation."""
        g = (self.fpsm_slot * self.fpsm_item(item_emb + self.feedback(clicks.long()))).sum(dim=-2)
        projected = self.hyperplanes(g)
        return torch.sign(projected) if hard else torch.tanh(projected)

    def fpsm_similarity(self, batch: Batch, perms: torch.Tensor, hard: bool) -> torch.Tensor:
        """Time-decayed code agreement ``[B, P]`` of candidate permutations (columns ``[B, P, k]``)
        with the user's history permutations (module doc)."""
        perm_items = batch.items.gather(1, perms.flatten(1)).view_as(perms)
        codes = self._signature(self.items(perm_items), torch.ones_like(perm_items), hard)
        hist_items, hist_clicks, real = self.history_permutations(batch)
        hist_codes = self._signature(self.items(hist_items), hist_clicks, hard)
        agreement = torch.einsum("bpm,bam->bpa", codes, hist_codes) / codes.shape[-1]  # 1 - 2 Ham / bits
        age = torch.arange(real.shape[1], device=real.device, dtype=agreement.dtype)
        weight = (self.time_decay ** age)[None, :] * real
        return (agreement * weight[:, None, :]).sum(-1) / weight.sum(-1, keepdim=True).clamp(min=1e-9)

    # ----------------------------------------------------------------------------- OCPM
    def ocpm_logits(self, batch: Batch, states: torch.Tensor, perms: torch.Tensor,
                    history: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Click logits ``[B, P, k]`` of each item at its slot of each permutation; ``states``:
        the candidates' fused encoder outputs ``[B, C, d]``."""
        batch_size, n, k = perms.shape
        d = states.shape[-1]
        slots = states.gather(1, perms.flatten(1)[..., None].expand(-1, -1, d)).view(batch_size * n, k, d)
        slots = self.omni(slots + self.slot.weight)
        keys, padded = self.history_states(batch) if history is None else history
        keys = keys.repeat_interleave(n, dim=0)
        padded = padded.repeat_interleave(n, dim=0)
        attended, _ = self.time_attention(slots, keys, keys, key_padding_mask=padded, need_weights=False)
        return self.ocpm_out(torch.cat([slots, attended], dim=-1)).view(batch_size, n, k)

    @staticmethod
    def permutation_value(logits: torch.Tensor) -> torch.Tensor:
        """OCPM's value of each permutation: the sum of its items' click probabilities."""
        return torch.sigmoid(logits).sum(-1)

    def _generator(self, batch: Batch) -> torch.Generator:
        """Inference draws: seeded from ``sample_seed`` and the batch's first request, so a request's
        permutations do not depend on the global RNG."""
        gen = torch.Generator(device=batch.items.device)
        gen.manual_seed(self.sample_seed * 1_000_003 + int(batch.request_id[0]) if len(batch) else self.sample_seed)
        return gen

    # ----------------------------------------------------------------------------- backbone hooks
    def select(self, batch: Batch, h: torch.Tensor, logits: torch.Tensor, x_late: torch.Tensor | None) -> torch.Tensor:
        """Inference: generate, keep the most similar by SimHash, let OCPM pick (``search="fpsm"``);
        or sort the candidate scores (``search="lite"``)."""
        if self.search == "lite":
            return logits.masked_fill(~batch.mask, -torch.inf)
        perms = plackett_luce_permutations(logits, batch.mask, self.n_perm, self.pool, self.k, self._generator(batch))
        # hashed similarities tie often (they are multiples of 2 / bits): ties keep generation order, greedy first
        similarity = self.fpsm_similarity(batch, perms, hard=True)
        kept = torch.argsort(similarity, dim=1, descending=True, stable=True)[:, :self.keep].sort(dim=1).values
        perms = perms.gather(1, kept[..., None].expand(-1, -1, self.k))
        value = self.permutation_value(self.ocpm_logits(batch, self.fused(h, x_late), perms))
        best = perms.gather(1, value.argmax(dim=1)[:, None, None].expand(-1, 1, self.k))[:, 0]
        return order_scores(best, batch.mask, rest=logits)

    def aux_loss(self, batch: Batch, h: torch.Tensor, logits: torch.Tensor,
                 x_late: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """OCPM's BCE on the generated permutations, FPSM's comparative loss (module doc)."""
        if self.search == "lite":
            return {}
        perms = plackett_luce_permutations(logits, batch.mask, self.n_train_perm, self.pool, self.k)
        if self.ocpm_logged:  # the logged list replaces the greedy permutation (module doc)
            perms[:, 0] = logged_slate(batch, self.k, positives_first=False)[0]
        ocpm = self.ocpm_logits(batch, self.fused(h, x_late), perms)
        labels = batch.labels.gather(1, perms.flatten(1)).view_as(perms)
        parts = {"ocpm": self.ocpm_weight * F.binary_cross_entropy_with_logits(ocpm, labels)}
        ranked = slice(1, None) if self.ocpm_logged else slice(None)  # FPSM ranks generated permutations only
        if perms[:, ranked].shape[1] > 1 and self.fpsm_weight > 0:
            value = self.permutation_value(ocpm[:, ranked]).detach()
            student = torch.log_softmax(self.fpsm_similarity(batch, perms[:, ranked], hard=False) / self.fpsm_tau, dim=1)
            if self.fpsm_teacher == "best":  # OCPM's preferred permutation is the positive
                parts["fpsm"] = self.fpsm_weight * F.nll_loss(student, value.argmax(dim=1))
            else:
                parts["fpsm"] = self.fpsm_weight * -(torch.softmax(value, dim=1) * student).sum(1).mean()
        return parts


register_variant("pier-lite", base="pier", groups=(), search="lite",
                 doc="PIER as the Kuaishou re-implementation runs it: candidate scores, score and sort (no search)")
register_score_variants("pier", "PIER")
