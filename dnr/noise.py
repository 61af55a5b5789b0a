"""DNR's noise generators (paper §3.3; methods.md §6.3–6.5, §6.9) and the noise statistics of Figure 5.

Every sample comes from torch's global RNG (``torch.randn`` and reparameterised Beta sampling), so
the trainer's checkpoint of the torch RNG state makes a run resumable and reproducible.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from benchmark.errors import ConfigError

NOISE_KINDS = ("gaussian", "beta")
POSTERIORS = ("eq4", "conjugate")
DIVERGENCES = ("kl", "bernoulli", "wasserstein")
HIST_BINS = 20
_MASKED_LOGIT = -1e9  # finite, so that masked slots get probability 0 without nan gradients


def mix(z: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4: synthetic retriever score x' = (1 - α)·z + α·ε."""
    return (1 - alpha) * z + alpha * eps


def implied_noise(x: torch.Tensor, z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4 solved for ε: the noise that turns feedback z into score x (Figure 5's "true" noise)."""
    return (x - (1 - alpha) * z) / alpha


class HeuristicNoise:
    """The non-parametric generators of §3.3 (methods.md §6.4): ε ~ N(0, 1) (DNR-G), ε ~ Beta(a, b)
    (DNR-B with the U-shaped a = b = 0.5; DNR-BL with Beta(2, 5), App. E.3)."""

    def __init__(self, kind: str, a: float = 0.5, b: float = 0.5, posterior: str = "eq4"):
        if kind not in NOISE_KINDS:
            raise ConfigError(f"noise must be one of {NOISE_KINDS}, not {kind!r}")
        if posterior not in POSTERIORS:
            raise ConfigError(f"posterior must be one of {POSTERIORS}, not {posterior!r}")
        if kind == "beta" and not (a > 0 and b > 0):
            raise ConfigError(f"Beta noise needs a, b > 0 (got a={a}, b={b})")
        if posterior == "conjugate" and kind != "beta":
            raise ConfigError("the conjugate posterior Beta(a + z, b + 1 - z) needs noise='beta'")
        self.kind, self.a, self.b, self.posterior = kind, float(a), float(b), posterior

    def __str__(self) -> str:
        name = "N(0, 1)" if self.kind == "gaussian" else f"Beta({self.a:g}, {self.b:g})"
        return name + (" conjugate posterior" if self.posterior == "conjugate" else "")

    def sample(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """i.i.d. noise ε of ``shape`` on ``like``'s device and dtype."""
        if self.kind == "gaussian":
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        a = torch.tensor(self.a, device=like.device, dtype=like.dtype)
        b = torch.tensor(self.b, device=like.device, dtype=like.dtype)
        return torch.distributions.Beta(a, b).rsample(shape)

    def synthesise(self, z: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, x'): Eq. 4 with i.i.d. ε, or (posterior='conjugate', methods.md §6.4 alternative)
        x' ~ Beta(a + z, b + 1 - z) directly, with ε the noise Eq. 4 implies for it."""
        if self.posterior == "conjugate":
            x_syn = torch.distributions.Beta(self.a + z, self.b + 1 - z).rsample()
            return implied_noise(x_syn, z, alpha), x_syn
        eps = self.sample(z.shape, z)
        return eps, mix(z, eps, alpha)

    def clamped_mean(self) -> float:
        """E[clamp(ε, 0, 1)]: the heuristic's mean on the (0, 1) support of the learned generator
        (Beta: a / (a + b); N(0, 1): φ(0) - φ(1) + P(ε > 1) ≈ 0.316)."""
        if self.kind == "beta":
            return self.a / (self.a + self.b)
        return (1 - math.exp(-0.5)) / math.sqrt(2 * math.pi) + 0.5 * math.erfc(1 / math.sqrt(2))


class NoiseGenerator(nn.Module):
    """Model-based generator f_φ (§3.4, methods.md §6.5): a 2-layer MLP on [r; c_i; z_i (; η_i)] with
    detached reranker features (per request r, e.g. the user state h_u, and per candidate c_i, e.g.
    the item embedding e_i), the feedback z_i and optional input noise η_i ~ N(0, I_k); sigmoid
    output ε_i ∈ (0, 1). The first layer's request block is applied once per request, not once per
    candidate (the same function, fewer FLOPs).

    Initialisation (methods.md §6.5 suggestion, against a shock at the switch epoch T): the output
    layer starts with zero weights and bias logit(m), m = the heuristic's mean on (0, 1)
    (:meth:`HeuristicNoise.clamped_mean`), so f_φ first emits ε = m for every candidate and moves
    away from it only under Eq. 7 and L_x."""

    def __init__(self, request_dim: int, candidate_dim: int, hidden: int, noise_dim: int, init_mean: float):
        super().__init__()
        self.request_dim, self.noise_dim = request_dim, noise_dim
        self.first = nn.Linear(request_dim + candidate_dim + 1 + noise_dim, hidden)
        self.out = nn.Linear(hidden, 1)
        m = min(max(init_mean, 1e-3), 1 - 1e-3)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, math.log(m / (1 - m)))

    def forward(self, request: torch.Tensor | None, candidates: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """ε ``[B, C]`` from request features ``[B, r]`` (None when r = 0), candidate features
        ``[B, C, c]`` and feedback ``[B, C]``."""
        parts = [candidates.detach(), z.unsqueeze(-1).to(candidates.dtype)]
        if self.noise_dim:
            parts.append(torch.randn(*z.shape, self.noise_dim, device=z.device, dtype=candidates.dtype))
        r = self.request_dim
        pre = nn.functional.linear(torch.cat(parts, dim=-1), self.first.weight[:, r:], self.first.bias)
        if r:
            pre = pre + nn.functional.linear(request.detach(), self.first.weight[:, :r]).unsqueeze(1)
        return torch.sigmoid(self.out(torch.relu(pre)).squeeze(-1))


def minmax_per_list(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-request min-max normalisation over the real candidates (methods.md §9.2 alternative)."""
    lo = x.masked_fill(~mask, torch.inf).amin(dim=1, keepdim=True)
    hi = x.masked_fill(~mask, -torch.inf).amax(dim=1, keepdim=True)
    return ((x - lo) / (hi - lo).clamp(min=1e-8)).masked_fill(~mask, 0.0)


def score_divergence(x_syn: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, form: str = "kl",
                     tau: float = 1.0) -> torch.Tensor:
    """L_x of Eq. 5: distance of synthetic scores x' from real scores x, batch mean (methods.md §6.9).

    * ``kl`` (default, option 1): per request KL(softmax(x'/τ) ‖ softmax(x/τ)) over the real
      candidates, written out in the paper's direction KL(p_φ ‖ p_x);
    * ``bernoulli`` (option 2): per candidate KL(Bern(x') ‖ Bern(x)), masked mean;
    * ``wasserstein`` (option 3): per request 1-D W1 between the sorted x' and sorted x."""
    n_real = mask.sum(dim=1).clamp(min=1)
    if form == "kl":
        log_p_syn = (x_syn / tau).masked_fill(~mask, _MASKED_LOGIT).log_softmax(dim=1)
        log_p = (x / tau).masked_fill(~mask, _MASKED_LOGIT).log_softmax(dim=1)
        return (log_p_syn.exp() * (log_p_syn - log_p)).sum(dim=1).mean()
    if form == "bernoulli":
        q, p = x_syn.clamp(1e-6, 1 - 1e-6), x.clamp(1e-6, 1 - 1e-6)
        per = q * (q.log() - p.log()) + (1 - q) * ((1 - q).log() - (1 - p).log())
        return ((per * mask).sum(dim=1) / n_real).mean()
    if form == "wasserstein":
        # Padded slots share one value in both lists, so after sorting they pair up and cancel.
        gap = x_syn.masked_fill(~mask, -1.0).sort(dim=1).values - x.masked_fill(~mask, -1.0).sort(dim=1).values
        return (gap.abs().sum(dim=1) / n_real).mean()
    raise ConfigError(f"reg_form must be one of {DIVERGENCES}, not {form!r}")


class NoiseMonitor:
    """Per-epoch statistics, accumulated on the samples' device without host syncs: 20-bin
    histograms on [0, 1] with moments of named noise samples (Figure 5, App. E.2), and plain means.

    Values outside [0, 1] (Gaussian ε) fall into the edge bins, so every histogram sums to its
    sample count, while mean/std use the raw values. Counting uses ``bincount`` without weights,
    which is deterministic on CUDA (``histc`` is not)."""

    def __init__(self):
        self._hist: dict[str, torch.Tensor] = {}
        self._moments: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self._hist.clear()
        self._moments.clear()

    def add_mean(self, name: str, values: torch.Tensor) -> None:
        v = values.detach().reshape(-1).double()
        moments = torch.stack([v.new_tensor(float(v.numel())), v.sum(), (v * v).sum()])
        self._moments[name] = moments + self._moments[name] if name in self._moments else moments

    def add_hist(self, name: str, values: torch.Tensor) -> None:
        self.add_mean(name, values)
        bins = (values.detach().reshape(-1).clamp(0, 1) * HIST_BINS).long().clamp(max=HIST_BINS - 1)
        hist = torch.bincount(bins, minlength=HIST_BINS)
        self._hist[name] = hist + self._hist[name] if name in self._hist else hist

    def summary(self) -> dict[str, Any]:
        """{name: mean} for plain means; {name: {hist, mean, std, n}} for histogrammed samples."""
        out: dict[str, Any] = {}
        for name, moments in self._moments.items():
            n, total, squares = moments.tolist()
            mean = total / n if n else 0.0
            out[name] = mean
            if name in self._hist:
                out[name] = {"hist": self._hist[name].tolist(), "mean": mean,
                             "std": math.sqrt(max(squares / n - mean * mean, 0.0)) if n else 0.0, "n": int(n)}
        return out
