"""DiffuRec (Li et al., ACM TOIS 2024; official code WHUIR/DiffuRec; methods.md §5.1), a continuous
diffusion model over item embeddings, adapted to scoring a request's candidates.

Inputs it sees: the history item ids (``batch.hist_items`` and ``hist_len``; not the history's
feedback labels, as the original models a plain interaction sequence) and the candidates' ids,
only to score them. No user id, no candidate context (a candidate's score depends on its id
alone, so permuting the candidates permutes the scores), no initial order, no retriever score.
Labels are read only by ``loss`` (they pick the training target).

Per request, with E the model's own item table (d = ``hidden``; row 0 is padding):

* **Item table** E: ``n_items + 1`` rows, row 0 the zero padding vector, the others drawn from
  N(0, ``init_std``²) (see the deviations).
* **History** (§5.1 "item embedding → dropout 0.3 → LayerNorm"; position embeddings are
  disabled in the original, so there are none here): h_j = LN(Dropout_emb(E[u_j])), j = 1..H,
  left-padded. A request with an empty history gets a learned "empty history" vector in its
  last slot (treated as a real slot), the only slot the read-out sees.
* **Forward process** on the target item's raw embedding e_0 = E[target]:
  x_t = √ᾱ_t·e_0 + √(1−ᾱ_t)·ε, ε ~ N(0, I), with DiffuRec's "trunc_lin" schedule over
  T = ``diffusion_steps`` steps (:func:`trunc_lin_betas`): s = 1000/T,
  β_1..β_T = linspace(0.01 + 1e-4·s, 0.01 + 0.02·s, T), the end falling back to 0.01 + 0.001·s
  when 0.01 + 0.02·s > 1 (T ≤ 20); α_t = 1 − β_t, ᾱ_t = Π_{i≤t} α_i. Steps are 0-based in the
  code (t = 0 is the first step, t = T−1 the noisiest).
* **Approximator** f_θ(x_t, t, h) (the original's ``Diffu_xstart``): z = x_t + MLP(sin(t·1000/T))
  (sinusoidal embedding of the rescaled step, MLP d → 4d → SiLU → d); every history slot gets
  h_j + λ_j ⊙ z with λ ~ N(``lambda_mean``, ``lambda_std``²) drawn **per element** [B, H, d]
  as in the official code (the "uncertainty injection"); then ``n_layers`` pre-LN transformer
  blocks (:class:`Block`: ``n_heads`` heads, FFN 4d with GELU, dropout ``dropout`` on the
  attention weights, the FFN's hidden layer and both residual branches; padded history slots
  masked out as keys), dropout, LayerNorm (eps 1e-12), read out at the last slot (the most
  recent item): x̂_0 = f_θ(x_t, t, h) (x_0-parameterisation). No causal mask and no positions,
  as the original: the history is a set except that its last item is where the read-out is.
* **Loss** (methods.md §5.1 "Adaptation"): the target is one of the request's positive
  candidates (label 1), drawn uniformly per request at every step (torch's global RNG), with
  t ~ U{0..T−1}; requests without a positive are left out (they draw nothing). The loss is the
  cross-entropy of the logits x̂_0 · E_cᵀ against the target:
  ``ce_over="candidates"`` (default): over the request's (real) candidates, i.e. list
  supervision with the 44 retriever fillers and the other exposed items as negatives, and cheap;
  ``ce_over="catalogue"``: over all items 1..n_items (the original's full softmax). Since the
  target is uniform over the positives, the expected candidate loss is the softmax CE against
  the uniform distribution over the positives.
* **Inference** (``score``): x_{T−1} ~ N(0, I); for each step t of the reverse chain,
  x̂_0 = f_θ(x_t, t, h) and x_s = μ̃(x̂_0, x_t) + σ_t·ε (no noise at the last step), with the
  posterior mean of q(x_s | x_t, x_0): μ̃ = √ᾱ_s·β'/(1−ᾱ_t)·x̂_0 + √α'·(1−ᾱ_s)/(1−ᾱ_t)·x_t,
  α' = ᾱ_t/ᾱ_s, β' = 1 − α' (ᾱ_s = 1 after the last step), and variance σ_t² = β' (the original's
  "fixed large" variance β_t). The score of candidate c is x̂_0 · E[c] with x̂_0 from the last
  step (the original's final sample equals that x̂_0, since its last posterior mean has
  coefficients (1, 0)); padded slots get −inf. A real score vector, not rank-derived.
  ``sample_steps`` = S ≤ T: the chain visits round(linspace(T−1, 0, S)) (all T steps when
  S = T, the original; S < T is a respaced chain with the β' above).

Choices where the original is silent or does not fit, and deviations:

* **Timestep sampling**: uniform. The original names a loss-aware sampler, but its loss history
  is never updated (the update call is commented out), so it never warms up and always samples
  uniformly; uniform is therefore what the official code does.
* **Randomness at inference**: every draw of ``score`` (the starting noise, λ, the per-step noise)
  comes from a local ``torch.Generator`` seeded with ``sample_seed``, so scores are a function of
  the model state and the batch (not of torch's global RNG, which ``score`` leaves untouched).
  A request's noise depends on its row in the batch, so scores depend on how a split is cut into
  batches (fixed by ``eval_batch_size``). ``inference_lambda="sample"`` (default) draws λ as
  in training, as the original does in its reverse chain; ``"mean"`` uses λ = ``lambda_mean``.
* **Padding mask**: keys at padded history slots are masked (the last slot, the read-out, is
  always a valid key, so no softmax is empty; outputs at padded slots are never read). The
  official attention masks the rows of padded *queries* instead, so its real positions also
  attend to padding; we do the standard thing. The blocks are written here (not
  :class:`baselines.blocks.ListEncoder`) so that the last one can compute the read-out slot only.
* **Target**: the original's target is the next interacted item and its CE runs over the whole
  catalogue; here the targets are the request's positive candidates (methods.md §5.1), and the
  default CE is over the 50 candidates (see Loss). The padding row is never a class.
* **Initialisation** (deviation): ``init_std`` = 0.1 where the original keeps nn.Embedding's
  N(0, 1). With N(0, 1) the logits x̂_0 · e (x̂_0 is LayerNorm'ed, unit scale per element) have
  std ≈ √d ≈ 11, the 50-way cross-entropy starts near 50 and, with the suite's early stopping,
  learns slowly: on the tiny ml-100k lists (150 users, 12 epochs) validation N@6 reached 0.53
  with std 1 and 0.68 with std 0.1 (SASRec: 0.67). ``init_std=1.0`` restores the original.
  With the smaller table the target embedding is also smaller against the unit forward noise;
  since λ ≈ 0.001 scales x_t down to a tiny perturbation of the history either way, the
  approximator leans on the history in both cases (as in the original).
* **Cost** (exact shortcuts, no change to the outputs): only the read-out slot is computed in
  the last block (its query attends to every key), and the leading history slots that are
  padding in every row of the batch are dropped (λ is still drawn for all H slots, so a row's
  draws do not depend on the other rows). Inference is still ``sample_steps`` passes of the
  approximator per request: about 34 ms per request on one CPU thread with the defaults (PRM:
  about 0.9 ms), and a training epoch about 2.2x PRM's (tiny ml-100k lists); ``sample_steps``
  < T trades fidelity for speed.
* **Validation** every ``eval_every`` = 5 epochs (and at the last), not after every epoch: one
  validation pass is ``sample_steps`` approximator passes per request, about 6x the cost of a
  training epoch on KuaiRand (44 ms per request on one thread: 217 s for the 4,969 validation
  requests against 35 s of training). The original validates every 20 of its 500 epochs; 5
  keeps the selection fine enough under the suite's patience, which still counts epochs (10:
  the run stops at the second validation without improvement). ``eval_every=1`` validates
  every epoch, as for the other methods.
* No StepLR and 500-epoch schedule: the suite's trainer (Adam, early stopping on validation N@6)
  trains every method the same way. ``dropout`` is the transformer dropout (0.1 in the original;
  the dataset TOML may set it, as for every method); ``emb_dropout`` (0.3) is DiffuRec's own.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker, Stage, Step
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import item_table
from baselines.losses import lists_with_a_positive

CE_OVER = ("candidates", "catalogue")
INFERENCE_LAMBDA = ("sample", "mean")


def trunc_lin_betas(steps: int) -> torch.Tensor:
    """DiffuRec's "trunc_lin" β schedule (float64, ``[steps]``): a linear ramp whose ends are the
    DDPM linear schedule's (1e-4, 0.02) rescaled by 1000/steps and shifted up by 0.01; when the
    rescaled end would exceed 1, the end is 0.001 x scale + 0.01 instead."""
    if steps < 1:
        raise ConfigError(f"diffusion_steps must be >= 1, got {steps}")
    scale = 1000.0 / steps
    start = 0.01 + 1e-4 * scale
    end = 0.01 + 0.02 * scale
    if end > 1.0:
        end = 0.01 + 0.001 * scale
    return torch.linspace(start, end, steps, dtype=torch.float64)


def step_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) steps ``t`` ``[B]``: cosines then
    sines of t times geometrically spaced frequencies 1 .. 1/max_period (zero-padded if dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


class Block(nn.Module):
    """One pre-LN transformer block (the original's ``TransformerBlock``): x + Drop(MHA(LN(x))),
    then x + Drop(W_2 Drop(GELU(W_1 LN(x)))) with W_1: d -> 4d, dropout on the attention weights
    too. Keys where ``valid`` is False are masked. ``last_only``: compute only the last slot's
    output (its query still attends to every valid key), all the final block needs."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)  # the original's TF-style LayerNorm eps
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * hidden, hidden))
        self.drop = nn.Dropout(dropout)
        for linear in (self.out, self.ffn[0], self.ffn[3]):
            nn.init.xavier_normal_(linear.weight)  # the original's initialisation of these layers

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        batch, length, hidden = x.shape
        heads = self.qkv(self.norm1(x)).view(batch, length, 3, self.n_heads, hidden // self.n_heads)
        q, k, v = heads.permute(2, 0, 3, 1, 4)  # each [B, heads, L, d / heads]
        if last_only:
            q, x = q[:, :, -1:], x[:, -1:]
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=valid[:, None, None, :], dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(batch, q.shape[2], hidden)))
        return x + self.drop(self.ffn(self.norm2(x)))


class Approximator(nn.Module):
    """f_θ(x_t, t, history) -> x̂_0 ``[B, d]`` (the original's ``Diffu_xstart``)."""

    def __init__(self, hidden: int, n_layers: int, n_heads: int, dropout: float, diffusion_steps: int):
        super().__init__()
        self.hidden = hidden
        self.step_scale = 1000.0 / diffusion_steps  # the original's rescale_timesteps
        self.step_mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
        self.blocks = nn.ModuleList(Block(hidden, n_heads, dropout) for _ in range(n_layers))
        self.out_dropout = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, history: torch.Tensor, valid: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                lam: torch.Tensor | float) -> torch.Tensor:
        """``history`` ``[B, H, d]``, ``valid`` ``[B, H]`` (every row needs a valid slot),
        ``x_t`` ``[B, d]``, ``t`` ``[B]`` (0-based steps), ``lam``: ``[B, H, d]`` or a number."""
        z = x_t + self.step_mlp(step_embedding(t * self.step_scale, self.hidden))
        h = history + lam * z[:, None, :]
        for i, block in enumerate(self.blocks):
            h = block(h, valid, last_only=i == len(self.blocks) - 1)
        return self.out_norm(self.out_dropout(h[:, -1]))


@register("diffurec", groups=("baselines",))
class DiffuRec(Reranker):
    """DiffuRec: diffused target embedding, history transformer as x_0-approximator, reverse chain, x̂_0 · e_c."""

    family = "diffusion"
    micro_batchable = True  # cross-entropy over the lists with a positive (one drawn target each)

    def __init__(self, spec: DataSpec, *, hidden: int = 128, n_layers: int = 4, n_heads: int = 4,
                 dropout: float = 0.1, emb_dropout: float = 0.3, diffusion_steps: int = 32, sample_steps: int = 32,
                 lambda_mean: float = 0.001, lambda_std: float = 0.001, inference_lambda: str = "sample",
                 ce_over: str = "candidates", sample_seed: int = 0, init_std: float = 0.1, eval_every: int = 5):
        """``diffusion_steps``: T of the forward process; ``sample_steps``: reverse steps at
        inference (1..T; T = the original); ``lambda_mean``/``lambda_std``: the uncertainty
        scale λ ~ N(mean, std²); ``inference_lambda``: "sample" or "mean" (λ in ``score``);
        ``ce_over``: "candidates" or "catalogue"; ``sample_seed``: seed of ``score``'s noise;
        ``init_std``: std of the item embeddings' normal initialisation (the original: 1);
        ``eval_every``: validate every this many epochs (the original: 20; see Validation)."""
        super().__init__(spec)
        if hidden < 1 or n_layers < 1 or n_heads < 1 or hidden % n_heads:
            raise ConfigError(f"hidden ({hidden}) must be a positive multiple of n_heads ({n_heads}), "
                              f"n_layers ({n_layers}) >= 1")
        for name, value in (("dropout", dropout), ("emb_dropout", emb_dropout)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if diffusion_steps < 1:
            raise ConfigError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
        if not 1 <= sample_steps <= diffusion_steps:
            raise ConfigError(f"sample_steps must be in 1..diffusion_steps ({diffusion_steps}), got {sample_steps}")
        if not init_std > 0 or not math.isfinite(init_std):
            raise ConfigError(f"init_std must be a positive number, got {init_std}")
        if lambda_std < 0 or not math.isfinite(lambda_mean) or not math.isfinite(lambda_std):
            raise ConfigError(f"lambda_mean must be finite and lambda_std >= 0, got {lambda_mean}, {lambda_std}")
        if eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
        if ce_over not in CE_OVER:
            raise ConfigError(f"ce_over must be one of {', '.join(CE_OVER)}, not {ce_over!r}")
        if inference_lambda not in INFERENCE_LAMBDA:
            raise ConfigError(f"inference_lambda must be one of {', '.join(INFERENCE_LAMBDA)}, "
                              f"not {inference_lambda!r}")
        self.diffusion_steps = diffusion_steps
        self.sample_steps = sample_steps
        self.lambda_mean = lambda_mean
        self.lambda_std = lambda_std
        self.inference_lambda = inference_lambda
        self.ce_over = ce_over
        self.sample_seed = sample_seed
        self.eval_every = eval_every

        betas = trunc_lin_betas(diffusion_steps)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ConfigError(f"the trunc_lin schedule for diffusion_steps={diffusion_steps} leaves (0, 1)")
        abar = torch.cumprod(1.0 - betas, dim=0)
        # derived from the hyper-parameters, so kept out of the state dict
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self._chain = self.reverse_chain(abar)

        self.items = item_table(spec, hidden)
        with torch.no_grad():  # N(0, init_std²); the original keeps nn.Embedding's N(0, 1)
            self.items.weight[1:].normal_(0.0, init_std)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.emb_norm = nn.LayerNorm(hidden, eps=1e-12)
        # a unit-scale vector, like a LayerNorm'ed item embedding
        self.empty_history = nn.Parameter(torch.randn(hidden))
        self.approximator = Approximator(hidden, n_layers, n_heads, dropout, diffusion_steps)

    # --- the diffusion process -------------------------------------------------------------------

    def reverse_chain(self, abar: torch.Tensor) -> list[tuple[int, float, float, float]]:
        """The reverse steps, noisiest first: ``(t, coef_x0, coef_xt, variance)`` per step, from
        the posterior q(x_s | x_t, x_0) of the visited steps t -> s (float64 arithmetic)."""
        # S = 1: linspace gives [T - 1], one step from pure noise to x̂_0
        steps = torch.linspace(self.diffusion_steps - 1, 0, self.sample_steps, dtype=torch.float64).round().long()
        chain = []
        for i, t in enumerate(steps.tolist()):
            abar_t = float(abar[t])
            abar_s = float(abar[steps[i + 1]]) if i + 1 < len(steps) else 1.0
            alpha = abar_t / abar_s
            beta = 1.0 - alpha
            chain.append((t, math.sqrt(abar_s) * beta / (1.0 - abar_t),
                          math.sqrt(alpha) * (1.0 - abar_s) / (1.0 - abar_t), beta))
        return chain

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise, ``t`` ``[B]`` 0-based."""
        abar = self.alphas_cumprod[t][:, None]
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    # --- the model -------------------------------------------------------------------------------

    def history(self, hist_items: torch.Tensor, hist_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [B, W, d], valid [B, W])``: LN(dropout(E[history])) over the last W = max(1,
        max hist_len) slots (the leading slots that are padding in every row are dropped: they
        would only be masked keys); rows with an empty history hold the learned empty vector in
        their last slot, marked valid."""
        length = hist_items.shape[1]
        width = max(1, min(length, int(hist_len.max()))) if len(hist_len) else 1
        slots = torch.arange(length - width, length, device=hist_items.device)
        valid = slots >= length - hist_len[:, None]
        h = self.emb_norm(self.emb_dropout(self.items(hist_items[:, length - width:])))
        empty = hist_len == 0
        if bool(empty.any()):
            last = torch.where(empty[:, None], self.empty_history, h[:, -1])
            h = torch.cat([h[:, :-1], last[:, None]], dim=1)
            valid = valid.clone()
            valid[:, -1] = True
        return h, valid

    def draw_lambda(self, shape: tuple[int, int, int], width: int, device: torch.device,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """λ ~ N(lambda_mean, lambda_std²) per element, drawn for all ``shape = (B, H, d)`` history
        slots (so the draws do not depend on how many slots are dropped) and cut to the last ``width``."""
        lam = torch.randn(shape, generator=generator, device=device) * self.lambda_std + self.lambda_mean
        return lam[:, shape[1] - width:]

    def sample_x0(self, batch: Batch) -> torch.Tensor:
        """x̂_0 ``[B, d]`` of the last reverse step; every draw from a generator seeded with
        ``sample_seed`` (torch's global RNG is not touched)."""
        device = batch.hist_items.device
        gen = torch.Generator(device=device).manual_seed(self.sample_seed)
        h, valid = self.history(batch.hist_items, batch.hist_len)
        size, width, hidden = h.shape
        full = (size, batch.hist_items.shape[1], hidden)
        x = torch.randn(size, hidden, generator=gen, device=device)
        x0 = x
        for i, (t, coef_x0, coef_xt, variance) in enumerate(self._chain):
            lam = self.draw_lambda(full, width, device, gen) if self.inference_lambda == "sample" else self.lambda_mean
            x0 = self.approximator(h, valid, x, torch.full((size,), t, device=device), lam)
            if i + 1 < len(self._chain):
                noise = torch.randn(x.shape, generator=gen, device=device)
                x = coef_x0 * x0 + coef_xt * x + math.sqrt(variance) * noise
        return x0

    def score(self, batch: Batch) -> torch.Tensor:
        x0 = self.sample_x0(batch)
        logits = torch.einsum("bd,bcd->bc", x0, self.items(batch.items))
        return logits.masked_fill(~batch.mask, -torch.inf)

    # --- training --------------------------------------------------------------------------------

    def slice_weight(self, batch: Batch) -> float:
        """The cross-entropy averages over the requests that have a positive (the others are skipped)."""
        return float(lists_with_a_positive(batch.labels, batch.mask))

    def stages(self) -> list[Stage]:
        """One phase, as every single-loss method, validated every ``eval_every`` epochs."""
        return [Stage("main", [Step("model", self.loss, self.parameters)], eval_every=self.eval_every)]

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        positive = (batch.labels > 0.5) & batch.mask
        rows = positive.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:  # nothing to learn from: a zero that still has a graph
            return {"ce": self.items.weight.sum() * 0.0}
        positive, items, mask = positive[rows], batch.items[rows], batch.mask[rows]
        column = torch.multinomial(positive.float(), 1).squeeze(1)  # one positive per request
        target = items.gather(1, column[:, None]).squeeze(1)

        hist_items = batch.hist_items[rows]
        h, valid = self.history(hist_items, batch.hist_len[rows])
        t = torch.randint(0, self.diffusion_steps, (rows.numel(),), device=h.device)
        x_t = self.q_sample(self.items(target), t, torch.randn_like(h[:, 0]))
        lam = self.draw_lambda((*hist_items.shape, h.shape[-1]), h.shape[1], h.device)
        x0 = self.approximator(h, valid, x_t, t, lam)

        if self.ce_over == "candidates":
            logits = torch.einsum("bd,bcd->bc", x0, self.items(items)).masked_fill(~mask, -torch.inf)
            return {"ce": nn.functional.cross_entropy(logits, column)}
        logits = x0 @ self.items.weight[1:].T  # items 1..n_items; the padding row is no class
        return {"ce": nn.functional.cross_entropy(logits, target - 1)}
