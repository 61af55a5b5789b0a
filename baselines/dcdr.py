"""DCDR, Discrete Conditional Diffusion Reranking (Lin et al., WWW'24 companion, arXiv 2308.06982;
methods.md §5.2 and its "Adaptation" paragraph).

No public code exists, and the paper's operation probabilities, schedule and network sizes are
not recoverable (methods.md §5.2), so every block below is our reading; the choices are listed.

Inputs it sees: the candidate item ids **in the initial (retriever) order** (position
embeddings of the candidate encoder, and the starting list = the first 6 real candidates), the
history and user id (shared user-state encoder, methods.md §1.4). It never reads
``batch.scores``. ``batch.labels`` and ``batch.exposed`` are read by ``loss`` only: the logged
slate x_0 and its responses (the condition) are training targets.

1. **Candidate context** (shared by the generator and the evaluator), per candidate i:

       c_i = ListEncoder(MLP([e_i ; h_u]) + p_i)_i        (p_i: learned initial-position embedding)

   as PRM (methods.md §3.3) but with the input concatenated instead of summed.
2. **Evaluator** (methods.md §5.2 "evaluator = the PRM-style scorer"): e_i = w · c_i + b,
   trained with pointwise BCE on ``batch.labels`` over the 50 candidates. The value of a list
   x (positions j = 1..K) is its DCG of evaluator probabilities,
   V(x) = Σ_j σ(e_{x_j}) / log2(j + 1).
3. **Discrete forward process** on slates of K = 6 candidate columns. x_0 = the logged slate
   (the exposed items in initial order, ``logged_slate(..., positives_first=False)``); the
   condition is its response vector c = (z_{x_0[1]}, ..., z_{x_0[K]}). Step t corrupts a slot
   that is still clean with probability β_t = 1 - ᾱ_t / ᾱ_{t-1} (ᾱ_t = cos²(π t / 2T), so
   ᾱ_0 = 1 and ᾱ_T = 0) by one of the paper's two operations: a *permutation-level* operation
   (with probability ``swap_prob``: the slot exchanges its item with other corrupted slots) or a
   *token-level* operation (otherwise: its item is replaced by a real candidate of the request
   that is not in x_0). Training only needs the marginal, so the process is defined through its
   closed form q(x_t | x_0), sampled in one shot:
     * each slot is kept with probability ᾱ_t, independently; the others are corrupted;
     * each corrupted slot is a "swap" slot with probability ``swap_prob``, else a "replace" slot;
       a lone swap slot (nothing to exchange with) becomes a replace slot;
     * the swap slots pass their items round a random cycle (a random cyclic permutation among
       them, so every swap slot changes item);
     * the replace slots get distinct items drawn uniformly from the request's real candidates
       outside x_0 (if that pool is too small, the remaining slots keep their item).
   Hence the corruption never brings in a padded candidate or a duplicate, x_t = x_0 at t = 0,
   and at t = T every slot differs from x_0 (a derangement of the swap slots plus fresh items;
   a request needs K real candidates outside x_0 for that, which our lists of 50 have). A step-by-step
   chain of these operations would not give exactly this marginal (a swapped item can be
   swapped back); the closed form *is* our forward process, as the closed forms of D3PM are.
4. **Conditional reverse model** p_θ(x_0 | x_t, u, c, t) (x_0-parameterisation, as DiffuRec,
   methods.md §5.1): a transformer over the K slate slots,

       s_j   = c_{x_t[j]} + E_cond[c_j] + E_step[t]  (+ slot-position embedding, in ListEncoder)
       o     = ListEncoder_K(s)                      (bidirectional, ``denoise_layers`` layers)
       log p_θ(x_0[j] = i) = log_softmax_i((W_q o_j) · (W_k c_i) / √d)   over real candidates i

   trained with the cross-entropy of each slot's x_0 item (averaged over the real target slots)
   plus the evaluator's BCE, summed 1:1 (``loss`` returns both parts). The user enters through
   c_i (which carries h_u); the paper's "likelihood of the reverse step under the forward
   posterior" is replaced by this x_0 cross-entropy (the usual simplification of discrete
   diffusion with x_0-parameterisation; the posterior of our marginal is not used).
5. **Inference** (``score``; no random draws): start from the retriever's top-6 (the first 6
   real candidate columns; not from noise), condition c = all ones (every slot clicked), and run
   up to ``sample_steps`` reverse steps at the strided step indices t = linspace(T, 1, S)
   rounded (the starting list is treated as fully noisy x_T: it shares only part of its items
   with a logged list). Each step, for every beam (``beam`` lists, kept with their cumulative
   log-probability), the model's per-slot distributions p_θ(x_0 | x_beam, c, t) are decoded by a
   slot-by-slot beam search over *distinct* real candidates (width ``beam``; a used or padded
   candidate is never taken while a real unused one is left), giving ``beam`` children per beam
   scored by parent log-prob + Σ_j log p_θ(child_j). Identical children are merged (the best
   copy kept) and the best ``beam`` lists become the new beams, i.e. the deterministic reverse
   step sets x_{t-1} to the predicted x_0. **Early stopping** per request: once a reverse step
   leaves a request's best list unchanged, that request's beams are frozen; the loop ends when
   every request is frozen or after ``sample_steps`` (``last_steps`` records how many ran).
   The evaluator then **picks** the final list: the beam with the highest V(x) (ties: the beam
   with the higher log-probability). ``score = order_scores(final, mask, rest=e)``: the 6 chosen
   columns on top in their generated order, every other candidate ranked by its evaluator
   logit, so AUC is rank-derived (``rank_derived_auc``; methods.md §1.3).

Choices where the paper is silent (methods.md §5.2: "not recoverable"): T = 10 training steps,
cosine keep schedule, ``swap_prob`` = 0.5 split between the two operations (fixed over t; the
step dependence is in β_t), t uniform on 1..T per request, 4 reverse steps, beam 4, one shared
candidate encoder for generator and evaluator trained jointly (the paper trains a separate list
evaluator; methods.md suggests the PRM-style scorer), the evaluator is pointwise on the
list-aware c_i with DCG position weights (it does not model the displayed order beyond them).
A request with fewer than K real candidates gets padded columns in its last slots (they are
never preferred over a real candidate; ``order_scores`` gives them -inf).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.api import Batch, DataSpec, Reranker, bce_loss, order_scores
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import ListEncoder, UserStateEncoder, candidate_inputs, dcg_weights, item_table, logged_slate, mlp

NO_TARGET = -100
"""``ignore_index`` of the slot cross-entropy (a target slot holding a padded column)."""
PADDED_LOGP = -1e9
"""Log-probability given to a padded candidate in decoding: taken only when no real one is left."""


@register("dcdr", groups=("baselines",))
class DCDR(Reranker):
    """DCDR: discrete conditional diffusion over slates (swap/replace noise), beam-search reverse process, evaluator pick."""

    family = "diffusion"
    rank_derived_auc = True
    micro_batchable = True  # the denoising NLL (k slots per full list) and the evaluator BCE are request means

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 2, n_heads: int = 4, ffn: int = 128,
                 dropout: float = 0.1, user_layers: int = 1, denoise_layers: int = 2, diffusion_steps: int = 10,
                 swap_prob: float = 0.5, sample_steps: int = 4, beam: int = 4):
        """``n_layers``: candidate-encoder layers; ``denoise_layers``: reverse-model layers over the
        slate; ``diffusion_steps``: T of the forward process; ``swap_prob``: share of the corrupted
        slots that take a permutation-level (swap) rather than a token-level (replace) operation;
        ``sample_steps``: most reverse steps at inference; ``beam``: beam width."""
        super().__init__(spec)
        if diffusion_steps < 1:
            raise ConfigError(f"diffusion_steps must be >= 1, not {diffusion_steps}")
        if not 1 <= sample_steps <= diffusion_steps:
            raise ConfigError(f"sample_steps must be in 1..diffusion_steps ({diffusion_steps}), not {sample_steps}")
        if beam < 1:
            raise ConfigError(f"beam must be >= 1, not {beam}")
        if not 0.0 <= swap_prob <= 1.0:
            raise ConfigError(f"swap_prob must be in [0, 1], not {swap_prob}")
        if denoise_layers < 1:
            raise ConfigError(f"denoise_layers must be >= 1, not {denoise_layers}")
        self.slate_len = spec.k
        self.diffusion_steps = diffusion_steps
        self.swap_prob = swap_prob
        self.sample_steps = sample_steps
        self.beam = beam
        self.last_steps = 0
        """Reverse steps run by the last ``generate`` call (early stopping may cut them short)."""
        # candidate context and evaluator
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.input_mlp = mlp((2 * hidden, hidden, hidden), dropout)
        self.candidates = ListEncoder(spec.list_len, hidden, n_layers, n_heads, ffn, dropout)
        self.evaluator = nn.Linear(hidden, 1)
        # reverse model
        self.condition = nn.Embedding(2, hidden)
        self.step = nn.Embedding(diffusion_steps + 1, hidden)
        self.slate_encoder = ListEncoder(spec.k, hidden, denoise_layers, n_heads, ffn, dropout)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)

    # --- candidate context and evaluator ---------------------------------------------------------

    def context(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c [B, C, hidden], evaluator logits e [B, C])``."""
        x = self.input_mlp(candidate_inputs(batch, self.items, self.user_encoder))
        c = self.candidates(x, batch.mask)
        return c, self.evaluator(c).squeeze(-1)

    def list_value(self, slates: torch.Tensor, evaluator_logits: torch.Tensor) -> torch.Tensor:
        """V(x) = Σ_j σ(e_{x_j}) / log2(j + 1) of slates ``[B, W, K]`` -> ``[B, W]``."""
        batch, width, k = slates.shape
        probs = torch.sigmoid(evaluator_logits).gather(1, slates.reshape(batch, width * k)).reshape(batch, width, k)
        return (probs * dcg_weights(k, slates.device)).sum(-1)

    # --- forward process ---------------------------------------------------------------------------

    def keep_prob(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t = cos²(π t / 2T): the probability that a slot of x_0 is still intact at step t."""
        return torch.cos(0.5 * math.pi * t.float() / self.diffusion_steps) ** 2

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A sample of q(x_t | x_0) (module docstring, block 3): ``x0`` ``[B, K]`` candidate columns,
        ``t`` ``[B]`` steps in 0..T, ``mask`` ``[B, C]`` the real candidates. Draws from torch's
        global RNG."""
        batch, k = x0.shape
        width = mask.shape[1]
        device = x0.device
        slot = torch.arange(k, device=device)
        real_slot = mask.gather(1, x0)  # a padded x_0 slot (short request) is left alone
        corrupted = (torch.rand(batch, k, device=device) >= self.keep_prob(t)[:, None]) & real_slot
        swap = corrupted & (torch.rand(batch, k, device=device) < self.swap_prob)
        lone = swap.sum(1, keepdim=True) == 1
        swap = swap & ~lone
        replace = corrupted & ~swap
        # permutation-level: the swap slots, in random order, each take the next one's item (a cycle)
        order = torch.argsort(torch.where(swap, torch.rand(batch, k, device=device), 2.0 + slot), dim=1)
        n_swap = swap.sum(1, keepdim=True)
        source = torch.where(slot < n_swap, (slot + 1) % n_swap.clamp(min=1), slot)
        xt = x0.scatter(1, order, x0.gather(1, order.gather(1, source)))
        # token-level: the replace slots take distinct random real candidates outside x_0
        pool = mask.clone()
        pool.scatter_(1, x0, False)
        keys = torch.where(pool, torch.rand(batch, width, device=device), -1.0)
        drawn_keys, drawn = keys.topk(k, dim=1)  # k distinct pool items in random order
        rank = replace.long().cumsum(1) - 1  # the m-th replace slot takes the m-th draw
        pick = drawn.gather(1, rank.clamp(min=0))
        usable = replace & (drawn_keys.gather(1, rank.clamp(min=0)) >= 0)
        return torch.where(usable, pick, xt)

    # --- reverse model -----------------------------------------------------------------------------

    def denoise(self, c: torch.Tensor, slates: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """log p_θ(x_0 | x_t, u, c, t): ``slates`` ``[B, W, K]`` columns (W lists per request),
        ``cond`` ``[B, W, K]`` 0/1 responses, ``t`` ``[B, W]`` steps -> ``[B, W, K, C]`` log-probs
        over the candidates per slot (padded candidates: -inf)."""
        batch, width, k = slates.shape
        hidden = c.shape[-1]
        tokens = c.gather(1, slates.reshape(batch, width * k, 1).expand(-1, -1, hidden)).reshape(batch, width, k, hidden)
        tokens = tokens + self.condition(cond) + self.step(t)[:, :, None, :]
        out = self.slate_encoder(tokens.reshape(batch * width, k, hidden),
                                 torch.ones(batch * width, k, dtype=torch.bool, device=c.device))
        logits = self.query(out).reshape(batch, width * k, hidden) @ self.key(c).transpose(1, 2) / math.sqrt(hidden)
        logits = logits.masked_fill(~mask[:, None, :], -torch.inf)
        return torch.log_softmax(logits, dim=-1).reshape(batch, width, k, -1)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        c, evaluator_logits = self.context(batch)
        x0, responses = logged_slate(batch, self.slate_len, positives_first=False)
        t = torch.randint(1, self.diffusion_steps + 1, (len(batch),), device=x0.device)
        xt = self.corrupt(x0, t, batch.mask)
        logp = self.denoise(c, xt[:, None], (responses > 0.5).long()[:, None], t[:, None], batch.mask)[:, 0]
        target = x0.masked_fill(~batch.mask.gather(1, x0), NO_TARGET)
        per_slot = F.nll_loss(logp.flatten(0, 1), target.flatten(), ignore_index=NO_TARGET, reduction="sum")
        denoise = per_slot / (target != NO_TARGET).sum().clamp(min=1)
        return {"denoise": denoise, "evaluator": bce_loss(evaluator_logits, batch.labels, batch.mask)}

    # --- inference ---------------------------------------------------------------------------------

    def decode(self, logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slot-by-slot beam search over distinct candidates: ``logp`` ``[M, K, C]`` per-slot
        log-probs, ``mask`` ``[M, C]`` real candidates -> ``(lists [M, W', K], log-probs [M, W'])``,
        best first, W' = min(beam, C) (a padded candidate is taken only when no real one is left)."""
        rows, k, width = logp.shape
        device = logp.device
        lists = torch.zeros(rows, 1, 0, dtype=torch.long, device=device)
        total = torch.zeros(rows, 1, device=device)
        used = torch.zeros(rows, 1, width, dtype=torch.bool, device=device)
        for j in range(k):
            step = torch.where(mask, logp[:, j].clamp(min=PADDED_LOGP), PADDED_LOGP)[:, None, :]
            step = step.masked_fill(used, -torch.inf)
            flat = (total[:, :, None] + step).reshape(rows, -1)
            total, index = flat.topk(min(self.beam, flat.shape[1]), dim=1)
            parent, item = index // width, index % width
            lists = torch.cat([lists.gather(1, parent[..., None].expand(-1, -1, j)), item[..., None]], dim=2)
            used = used.gather(1, parent[..., None].expand(-1, -1, width)).scatter(2, item[..., None], True)
        return lists, total

    def start_list(self, mask: torch.Tensor) -> torch.Tensor:
        """The retriever's top-K: the first K real candidate columns ``[B, K]`` (padded ones after)."""
        return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : self.slate_len]

    def timesteps(self) -> list[int]:
        """The model step index of each reverse step: linspace(T, 1, S), rounded."""
        return [int(v) for v in torch.linspace(self.diffusion_steps, 1, self.sample_steps).round().tolist()]

    def generate(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(final [B, K], beams [B, W, K], beam log-probs [B, W], evaluator logits [B, C])``; sets
        ``last_steps``. Never reads labels, exposure or retriever scores."""
        c, evaluator_logits = self.context(batch)
        mask = batch.mask
        n, k, w = len(batch), self.slate_len, self.beam
        device = mask.device
        beams = self.start_list(mask)[:, None, :].repeat(1, w, 1)
        beam_logp = torch.full((n, w), -torch.inf, device=device)
        beam_logp[:, 0] = 0.0
        frozen = torch.zeros(n, dtype=torch.bool, device=device)
        cond = torch.ones(n, w, k, dtype=torch.long, device=device)  # the desired responses: all clicked
        self.last_steps = 0
        for t in self.timesteps():
            steps = torch.full((n, w), t, dtype=torch.long, device=device)
            logp = self.denoise(c, beams, cond, steps, mask)
            children, child_logp = self.decode(logp.flatten(0, 1), mask.repeat_interleave(w, dim=0))
            per_beam = children.shape[1]
            children = children.reshape(n, w * per_beam, k)
            total = (beam_logp[:, :, None] + child_logp.reshape(n, w, per_beam)).reshape(n, w * per_beam)
            # merge identical children (keep the best copy), then keep the best W
            total, rank = total.sort(dim=1, descending=True, stable=True)
            children = children.gather(1, rank[..., None].expand(-1, -1, k))
            same = (children[:, :, None, :] == children[:, None, :, :]).all(-1)
            earlier = torch.ones_like(same[0]).triu(diagonal=1)  # [a, b]: a ranked before b
            duplicate = (same & earlier).any(dim=1)
            total, keep = total.masked_fill(duplicate, -torch.inf).sort(dim=1, descending=True, stable=True)
            total, keep = total[:, :w], keep[:, :w]
            new_beams = children.gather(1, keep[..., None].expand(-1, -1, k))
            changed = (new_beams[:, 0] != beams[:, 0]).any(-1)
            live = ~frozen
            beams = torch.where(live[:, None, None], new_beams, beams)
            beam_logp = torch.where(live[:, None], total, beam_logp)
            frozen = frozen | ~changed
            self.last_steps += 1
            if bool(frozen.all()):
                break
        value = self.list_value(beams, evaluator_logits).masked_fill(torch.isneginf(beam_logp), -torch.inf)
        best = torch.argmax(value, dim=1)  # first maximum: beams are sorted by log-prob
        final = beams.gather(1, best[:, None, None].expand(-1, 1, k))[:, 0]
        return final, beams, beam_logp, evaluator_logits

    def score(self, batch: Batch) -> torch.Tensor:
        final, _, _, evaluator_logits = self.generate(batch)
        return order_scores(final, batch.mask, rest=evaluator_logits)
