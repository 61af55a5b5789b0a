"""DNR (paper §3.3–3.4, Algorithm 1 of App. C as reconstructed in methods.md §6.10): a backbone
reranker q_θ trained on real and synthetic retriever scores, with a heuristic noise generator up to
the switch epoch T and an adversarial, regularised model-based generator f_φ after it.

Cost per training batch (methods.md §6.12; E.7). Late injection (default): the backbone's encoder
runs once, forward and backward, and its small head twice (real x and synthetic x'), before and
after T. After T that encoder pass's user/item context also conditions f_φ (detached; no extra
backbone pass), plus one pass of the generator MLP; the generator step then reuses that x'(φ) and the step's encoder output
(``gen_encoding="cached"``) and adds one head pass and the backward through head and generator;
``gen_encoding="fresh"`` adds an encoder forward without gradients and a second generator pass.
Input-level injection (``plus``/``concat``/``weight``): two encoder passes in the reranker step and a
third, with backward, in the generator step.
"""
from __future__ import annotations

from typing import Any

import torch

from benchmark import registry
from benchmark.api import Batch, DataSpec, Reranker, Stage, Step, bce_loss
from benchmark.errors import ConfigError
from benchmark.registry import register, register_variant
from dnr.noise import (DIVERGENCES, HIST_BINS, HeuristicNoise, NoiseGenerator, NoiseMonitor, implied_noise,
                       minmax_per_list, mix, score_divergence)

INJECTIONS = ("late", "plus", "concat", "weight")
SCORE_RANGES = ("clamp", "none", "minmax")
GEN_ENCODINGS = ("cached", "fresh")
GEN_INPUTS = ("context", "encoded")


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, not {value!r}")


@register("dnr-b", groups=("dnr",))
class DNR(Reranker):
    """DNR: denoising reranker, heuristic then adversarial learned noise on the retriever score (§3)."""

    family = "dnr"
    uses_retriever_score = True
    backbone_controlled = ("hidden", "n_layers", "dropout", "late_score", "score_input")
    """The backbone's hyper-parameters DNR sets itself; the backbone's others are ``backbone_args``,
    which ``benchmark.config`` fills with the backbone slug's resolved defaults so that they are
    part of every DNR record's config (and hash): a change of a backbone default re-runs DNR too."""

    def __init__(self, spec: DataSpec, *, backbone: str = "prm", hidden: int = 128, n_layers: int = 2,
                 dropout: float = 0.1, injection: str = "late", noise: str = "beta", beta_a: float = 0.5,
                 beta_b: float = 0.5, posterior: str = "eq4", score_range: str = "clamp", alpha: float = 0.4,
                 lam: float = 0.4, switch_epoch: int = 40, learned_generator: bool = True,
                 adversarial: bool = True, regulariser: bool = True, reg_weight: float = 1.0,
                 reg_form: str = "kl", reg_tau: float = 1.0, gen_hidden: int = 128, gen_noise_dim: int = 8,
                 gen_lr: float | None = None, gen_encoding: str = "cached", gen_input: str = "context",
                 backbone_args: dict | None = None):
        super().__init__(spec)
        backbone_args = dict(backbone_args or {})
        clash = sorted(set(backbone_args) & set(self.backbone_controlled))
        if clash:
            raise ConfigError(f"backbone_args may not set {clash}: DNR sets them (use DNR's own keys)")
        _choice("injection", injection, INJECTIONS)
        _choice("score_range", score_range, SCORE_RANGES)
        _choice("reg_form", reg_form, DIVERGENCES)
        _choice("gen_encoding", gen_encoding, GEN_ENCODINGS)
        _choice("gen_input", gen_input, GEN_INPUTS)
        if gen_input == "encoded" and injection != "late":
            raise ConfigError("gen_input='encoded' needs injection='late' (else the encoding has seen the real x)")
        if not 0 < alpha <= 1:
            raise ConfigError(f"alpha (share of noise in Eq. 4) must be in (0, 1], not {alpha}")
        if lam < 0 or switch_epoch < 0 or reg_tau <= 0 or gen_noise_dim < 0:
            raise ConfigError("DNR needs lam >= 0, switch_epoch >= 0, reg_tau > 0 and gen_noise_dim >= 0")
        if learned_generator and not (adversarial or regulariser):
            raise ConfigError("a learned generator needs adversarial=True or regulariser=True (else it has no loss)")
        self.late = injection == "late"
        self.backbone = registry.build(backbone, spec, late_score=self.late,
                                       score_input="none" if self.late else injection, dropout=dropout,
                                       n_layers=n_layers, hidden=hidden, **backbone_args)
        self.rank_derived_auc = self.backbone.rank_derived_auc  # PIER's search emits an order
        self.heuristic = HeuristicNoise(noise, beta_a, beta_b, posterior)
        self.generator = (NoiseGenerator(hidden if gen_input == "context" else 0, hidden, gen_hidden, gen_noise_dim,
                                         self.heuristic.clamped_mean()) if learned_generator else None)
        self.score_range, self.alpha, self.lam, self.switch_epoch = score_range, alpha, lam, switch_epoch
        self.adversarial, self.regulariser, self.reg_weight = adversarial, regulariser, reg_weight
        self.reg_form, self.reg_tau, self.gen_lr = reg_form, reg_tau, gen_lr
        self.gen_encoding, self.gen_input = gen_encoding, gen_input
        self.monitor = NoiseMonitor()
        self._epoch = 0
        # per batch (or micro-batch slice) of this update: (batch, encoder output, x'(φ)) of the reranker step
        self._shared: dict[int, tuple] = {}
        self.micro_batchable = self.backbone.micro_batchable  # DNR's own losses are request means

    # ----------------------------------------------------------------------------- schedule
    def learned(self, epoch: int) -> bool:
        """Algorithm 1: f_φ replaces the heuristic (and is trained) only after the switch epoch T."""
        return self.generator is not None and epoch > self.switch_epoch

    def epoch_begin(self, epoch: int) -> None:
        self._epoch = epoch
        self._shared = {}
        self.monitor.reset()

    def stages(self) -> list[Stage]:
        steps = [Step("reranker", self.loss, self.backbone.parameters)]
        if self.generator is None:
            return [Stage("main", steps)]
        steps.append(Step("generator", self.generator_loss, self.generator.parameters, active=self.learned,
                          lr=self.gen_lr))
        # Early stopping may not end training before f_φ has been used for one epoch.
        return [Stage("main", steps, min_epochs=self.switch_epoch + 1)]

    # ----------------------------------------------------------------------------- scores
    def _real(self, batch: Batch) -> torch.Tensor:
        return minmax_per_list(batch.scores, batch.mask) if self.score_range == "minmax" else batch.scores

    def _in_range(self, x_syn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x' in the real scores' range (methods.md §6.4: Gaussian x' leaves [0, 1])."""
        if self.score_range == "clamp":
            return x_syn.clamp(0, 1)
        return minmax_per_list(x_syn, mask) if self.score_range == "minmax" else x_syn

    def _encoded(self, batch: Batch, x: torch.Tensor, encoded: torch.Tensor | None = None) -> torch.Tensor:
        """The backbone's encoder output for score x: shared across scores under late fusion (the
        given one, or a fresh pass), one pass per score under input-level injection (§6.12)."""
        if self.late:
            return self.backbone.encode(batch) if encoded is None else encoded
        return self.backbone.encode(batch, x)

    def _logits(self, batch: Batch, x: torch.Tensor, encoded: torch.Tensor | None = None) -> torch.Tensor:
        """q_θ(u, C, x): late additive fusion on the (given or fresh) encoder output, or input-level
        injection through the backbone's score input (methods.md §6.12)."""
        return self.backbone.head(self._encoded(batch, x, encoded), x if self.late else None)

    def score(self, batch: Batch) -> torch.Tensor:
        """Inference on the real retriever scores through the backbone's own selection (PRM: sort
        the logits; PIER: its permutation search); the generator is unused (Algorithm 1)."""
        x = self._real(batch)
        h = self._encoded(batch, x)
        x_late = x if self.late else None
        return self.backbone.select(batch, h, self.backbone.head(h, x_late), x_late)

    # ----------------------------------------------------------------------------- losses
    def _features(self, batch: Batch, encoded: torch.Tensor | None = None, context: tuple | None = None) -> tuple:
        """f_φ's detached conditioning (methods.md §6.5): the backbone's (user state, item embeddings),
        reused from the reranker step's encoder pass when given, or with gen_input="encoded" the
        encoder output h_i of this batch (no extra backbone pass either way)."""
        if self.gen_input == "context" and context is not None:
            return tuple(c.detach() for c in context)
        with torch.no_grad():
            if self.gen_input == "context":
                return self.backbone.context(batch)
            return None, self.backbone.encode(batch) if encoded is None else encoded.detach()

    def synthesise(self, batch: Batch, features: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε, x') of Eq. 4 for the current epoch: heuristic noise up to T, f_φ after it (then
        differentiable in φ; ``features``: f_φ's conditioning, computed here if None)."""
        z = batch.labels
        if self.learned(self._epoch):
            eps = self.generator(*(self._features(batch) if features is None else features), z)
            x_syn = mix(z, eps, self.alpha)
        else:
            eps, x_syn = self.heuristic.synthesise(z, self.alpha)
        return eps, self._in_range(x_syn, batch.mask)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 6, φ frozen: BCE(q_θ(x), z) + λ·BCE(q_θ(x'), z) with x' detached."""
        z, mask = batch.labels, batch.mask
        learned = self.learned(self._epoch)
        share = learned and self.gen_encoding == "cached"
        # one encoder pass for both heads; after T its user/item context also feeds f_φ (detached)
        context = self.backbone.context(batch) if self.late and learned and self.gen_input == "context" else None
        encoded = self.backbone.encode(batch, context=context) if self.late else None
        with torch.set_grad_enabled(share):  # a shared x'(φ) keeps its graph for the generator step
            eps, x_syn = self.synthesise(batch, self._features(batch, encoded, context) if learned else None)
        x_real = self._real(batch)
        h_real = self._encoded(batch, x_real, encoded)
        x_late = x_real if self.late else None
        logits_real = self.backbone.head(h_real, x_late)
        direct = bce_loss(logits_real, z, mask)
        # the backbone's own further losses (PIER's permutation evaluator and FPSM) on the real x
        extra = self.backbone.aux_loss(batch, h_real, logits_real, x_late)
        augmented = bce_loss(self._logits(batch, x_syn.detach(), encoded), z, mask)
        if share:
            self._shared[id(batch)] = (batch, None if encoded is None else encoded.detach(), x_syn)
        self._record(batch, eps.detach(), x_syn.detach(), direct=direct, augmented=augmented)
        return {"direct": direct, "augmented": self.lam * augmented, **extra}

    def generator_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Eq. 7 + μ·L_x, θ frozen (used after T): -BCE(q_θ(x'(φ)), z) + μ·L_x(x', x), with
        gradients through x' into φ. With ``gen_encoding="cached"`` it attacks the very x'(φ) the
        reranker step of this batch trained on, on that step's encoder output; with ``"fresh"`` it
        re-encodes with the updated θ and draws x'(φ) anew."""
        z, mask = batch.labels, batch.mask
        shared = self._shared.pop(id(batch), None)
        if shared is not None and shared[0] is batch:
            _, encoded, x_syn = shared
        else:
            with torch.no_grad():
                encoded = self.backbone.encode(batch) if self.late else None
            _, x_syn = self.synthesise(batch, self._features(batch, encoded))
        parts = {}
        if self.adversarial:
            adversarial = bce_loss(self._logits(batch, x_syn, encoded), z, mask)
            self.monitor.add_mean("loss_adversarial_bce", adversarial)
            parts["adversarial"] = -adversarial
        if self.regulariser:
            divergence = score_divergence(x_syn, self._real(batch), mask, self.reg_form, self.reg_tau)  # L_x
            self.monitor.add_mean("loss_regulariser", divergence)
            parts["regulariser"] = self.reg_weight * divergence
        return parts

    # ----------------------------------------------------------------------------- Figure 5 log
    def _record(self, batch: Batch, eps: torch.Tensor, x_syn: torch.Tensor, **losses: torch.Tensor) -> None:
        mask, z, x = batch.mask, batch.labels, batch.scores
        self.monitor.add_hist("eps", eps[mask])
        self.monitor.add_hist("eps_real", implied_noise(x, z, self.alpha)[mask].clamp(0, 1))
        self.monitor.add_hist("abs_gap", (x - z).abs()[mask])
        # Overlap of synthetic scores across labels (methods.md §6.4: Beta noise with α <= 0.5 never crosses).
        self.monitor.add_mean("crossed", ((x_syn > 0.5) != (z > 0.5))[mask].float())
        for name, value in losses.items():
            self.monitor.add_mean(f"loss_{name}", value)

    def epoch_log(self) -> dict[str, Any]:
        """``{"noise": ...}`` for the epoch just trained: 20-bin histograms on [0, 1] (counts) with
        mean/std/n of the ε used in Eq. 6 (``eps``), of the real noise ε_real = (x - (1-α)z)/α
        clipped to [0, 1] (``eps_real``) and of |x - z| (``abs_gap``); the generator in use; the share
        of x' on the wrong side of 0.5 (``crossed``); unweighted loss means (``loss_augmented`` is
        L_z before λ, ``loss_adversarial_bce`` the BCE that f_φ maximises, ``loss_regulariser`` L_x)."""
        return {"noise": {"generator": "learned" if self.learned(self._epoch) else "heuristic",
                          "heuristic": str(self.heuristic), "alpha": self.alpha, "bins": HIST_BINS,
                          "range": [0.0, 1.0], **self.monitor.summary()}}


register_variant("dnr-g", base="dnr-b", doc="DNR-G: Gaussian N(0, 1) noise up to T, then the learned generator",
                 noise="gaussian")
register_variant("dnr-bl", base="dnr-b", doc="DNR-BL: Beta(2, 5) noise up to T, then the learned generator (App. E.3)",
                 beta_a=2.0, beta_b=5.0)
register_variant("dnr-g-heuristic", base="dnr-b", groups=("dnr-ablations",), noise="gaussian",
                 learned_generator=False, doc="Table 3 'w/ G': Gaussian noise for all epochs, no learned generator")
register_variant("dnr-b-heuristic", base="dnr-b", groups=("dnr-ablations",),
                 learned_generator=False, doc="Table 3 'w/ B': Beta(0.5, 0.5) noise for all epochs, no learned generator")
register_variant("dnr-g-no-adv", base="dnr-b", groups=("dnr-ablations",), noise="gaussian", adversarial=False,
                 doc="Table 3 'G w/o L_adv': DNR-G with the generator trained on L_x only")
register_variant("dnr-b-no-adv", base="dnr-b", groups=("dnr-ablations",), adversarial=False,
                 doc="Table 3 'B w/o L_adv': DNR-B with the generator trained on L_x only")
register_variant("dnr-g-no-reg", base="dnr-b", groups=("dnr-ablations",), noise="gaussian", regulariser=False,
                 doc="Table 3 'G w/o L_x': DNR-G with the generator trained on L_adv only")
register_variant("dnr-b-no-reg", base="dnr-b", groups=("dnr-ablations",), regulariser=False,
                 doc="Table 3 'B w/o L_x': DNR-B with the generator trained on L_adv only")
# Table 10's "original PRM+DNR" row is the DNR-G row of Table 1, so the larger pair is DNR-G too
register_variant("dnr-large", base="dnr-b", groups=("large",), doc="DNR-G on a larger PRM backbone (App. E.5, Table 10)",
                 noise="gaussian", n_layers=6)
register_variant("dnr-pier", base="dnr-b", groups=("dnr-on-pier",), backbone="pier",
                 doc="DNR (Beta noise, as Table 2's DNR rows) on the PIER backbone: losses on OCPM's candidate scores")
register_variant("dnr-pier-g", base="dnr-b", groups=("dnr-on-pier",), backbone="pier", noise="gaussian",
                 doc="DNR-G on the PIER backbone")
