"""EGRerank, Evaluator-Generator reranking (Huzhang et al., 2023; methods.md §4.1).

Inputs it sees: the candidate item ids and the user state h_u of the shared history encoder
(methods.md §1.4; the paper's model has no user, §4.1's adaptation adds h_u to every input). It
never reads ``batch.scores`` nor the initial order (the generator is a pointer network over the
candidate *set*, the evaluator reads a slate in its display order; only exact score ties fall back
to the retriever order, in ``order_scores``). ``labels`` and ``exposed``
are read by the training losses only, never by ``score``.

Shared input of candidate i:  x_i = [e_i ; h_u]  (item embedding, user state; 2d wide, d = hidden).

**Evaluator** (list-aware click model of a displayed slate c_1..c_K, LibRerank's ``EGR_evaluator``):

    g_1..g_K = GRU(x_{c_1}, ..., x_{c_K})                      (display order, hidden d)
    logit_k  = MLP([g_k ; x_{c_k}])                            (widths ``evaluator_mlp``, then 1)

trained with BCE on (a) the logged slate (``logged_slate(batch, K)``: the exposed items, positives
first, the suite's shared convention since the display order is not logged) and (b)
``n_random_slates`` random K-slates per request, drawn uniformly without replacement from the real
candidates, in random order, labelled by ``batch.labels`` (a filler has label 0, as the metrics
count it). The two BCE means are summed and logged as separate parts. (b) is our addition for the
pitfall of §4.1: here every logged slate is exactly the 6 exposed items, so an evaluator trained on
logged slates alone never sees one of the 44 fillers, and its rewards for the generator's slates,
which do contain fillers, would be out-of-distribution.

**Generator** (pointer network, LibRerank's ``PPOModel``):

    u_i     = ReLU(MLP(x_i))                                   (candidate encoder, d -> d)
    s_k     = LSTMCell(u_{a_{k-1}}, s_{k-1})                   (u_{a_{-1}} = a learned start vector, s_{-1} = 0)
    l_{k,i} = w · ReLU(W_u u_i + W_s s_k + b) + b'            (an MLP on [u_i ; s_k] with one hidden layer)
    pi_k    = softmax of l_k over the candidates neither chosen nor padded; K = spec.k steps.

The first layer of the pointer MLP is split (W_u u_i once per request, W_s s_k once per step) so
that the per-step cost is one add, ReLU and dot product per candidate; LibRerank uses two hidden
layers (200, 80) and a 32-unit LSTM, we use one hidden layer of width d and a d-unit LSTM (cost:
the PPO step evaluates rep_num x K x C pointer logits per request). The generator reads x_i from
the **evaluator's** item table and user encoder, frozen and detached (computed in eval mode): it
owns only its encoder MLP, start vector, LSTM cell and pointer MLP, so that PPO's noisy gradients
never move the embeddings the reward is built on.

**Training** (``stages()``): stage "evaluator" steps the evaluator's parameters (its item table
and user encoder included) on the evaluator BCE; stage "generator" steps the generator's
parameters only on the PPO loss, with the evaluator frozen:

* per request, ``rep_num`` rollouts of K steps are sampled from pi (Gumbel-max on torch's global
  RNG); with probability ``explore``, drawn once per batch from torch's RNG, the whole batch is
  rolled out with uniform-random actions over the allowed candidates instead (LibRerank);
* reward r_k (eval mode, no dropout), chosen by ``reward``:

  - ``"item"`` (default; methods.md §4.1's adaptation): w_k * sigmoid(a_{c_k}), the evaluator's
    click probability of the chosen item shown alone (``alone_logits``), weighted by the DCG
    weight w_k = 1 / log2(k + 2), so the slate's reward is Σ_k w_k s(c_k);
  - ``"slate"`` (LibRerank): the frozen evaluator's click probability at position k of the whole
    generated slate, read by its GRU in order.

  Why ``"item"`` is the default: on the real KuaiRand lists the ``"slate"`` reward made the
  policy collapse at about half the reward available. The evaluator learns from positives-first
  logged slates, so its reward at positions 2-6 is dominated by position and context, not by
  the item. The same generator learned from ``"item"`` (results/NOTES.md, "EGRerank's
  generator"). The list-aware evaluator still trains and still serves phase 0's scores.
  Return G_k = r_k + reward_gamma * G_{k+1} (LibRerank: gamma = 0.01);
* advantages A = G standardised across the rollouts of the same request, per position
  (population std; a zero std gives A = 0), as LibRerank's ``get_gaes``;
* loss = -mean_k min(rho A, clip(rho, 1 - clip, 1 + clip) A) - entropy_weight * mean entropy(pi_k),
  rho = pi(a_k) / pi_old(a_k), over the real steps of every rollout (logged as the parts ``ppo``
  and ``entropy``; the evaluator's parts are ``logged`` and ``random``).

One PPO update per batch: the rollout is sampled in the same forward pass that keeps the graph,
and the behaviour log-probabilities are that pass's values, detached. This is exactly the
"sample with no grad, recompute with grad" scheme (same parameters, same dropout masks;
:meth:`PointerGenerator.decode` with ``actions=`` recomputes them and the tests check the match)
at one forward's cost, and it means rho = 1 at the update, so the clipped objective's gradient is
the policy gradient A * grad log pi; the clip would only bind with several updates per rollout,
which the trainer's one-step-per-batch contract does not give. As in LibRerank, the behaviour
log-probability of an exploration batch is the *policy's* log-probability of the random action
(no importance correction for the uniform behaviour). The mean sampled reward of each epoch is
recorded in the history as ``generator_reward`` (``epoch_log``).

**Scores**: a buffer ``phase`` (0: evaluator, 1: generator) set by each stage's ``on_start``
(also called on resume, and the buffer travels with the state dict and checkpoints):

* phase 0: the evaluator's logit of each candidate shown alone at the first slate position (so
  the trainer's validation N@6 early-stops the evaluator on a meaningful number);
* phase 1 (and after training): the greedy arg-max decode of K items, turned into scores by
  :func:`~benchmark.api.order_scores` with the generator's first-step logits ranking the rest
  (so ``rank_derived_auc = True``). LibRerank samples from the policy even at evaluation; we decode
  greedily, so ``score`` is deterministic.

Left out: the paper's discriminator (a "realism" reward for generated vs logged lists) is
optional per methods.md §4.1 and commented out in LibRerank; LibRerank's batch normalisation in
the evaluator; decoding the full list (LibRerank decodes all C positions, we decode K = 6). A
request with fewer than K real candidates decodes its padded columns after the real ones (they
get no reward, no loss, and ``-inf`` scores).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch
from torch import nn

from benchmark.api import Batch, DataSpec, Reranker, Stage, Step, bce_loss, order_scores
from benchmark.errors import ConfigError
from benchmark.registry import register
from baselines.blocks import UserStateEncoder, candidate_inputs, dcg_weights, item_table, logged_slate, mlp, widths

REWARDS = ("item", "slate")
"""What the generator's per-position reward reads (see the module docstring)."""

NEG = -1e9
"""Logit of a candidate that may not be chosen: finite, so that softmax gives it exactly 0 and the
entropy's p * log p stays 0 with finite gradients (an ``-inf`` would give 0 * inf = NaN)."""


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode inside the block, its previous mode restored after."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_k = r_k + gamma * G_{k+1}`` along the last dimension (reward-to-go)."""
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for k in reversed(range(rewards.shape[-1])):
        running = rewards[..., k] + gamma * running
        out[..., k] = running
    return out


def standardised_advantages(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``rewards`` ``[B, R, K]`` (R rollouts of one request) -> the returns standardised across the
    R rollouts, per request and position (population std; where it is ~0 the advantage is 0)."""
    returns = discounted_returns(rewards, gamma)
    mean = returns.mean(dim=1, keepdim=True)
    std = returns.std(dim=1, unbiased=False, keepdim=True)
    return (returns - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))


def ppo_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate ``min(rho A, clip(rho, 1-clip, 1+clip) A)`` per action (to maximise)."""
    ratio = torch.exp(logp - old_logp)
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)


class Evaluator(nn.Module):
    """Item table, user-state encoder and the list-aware click model of a slate."""

    def __init__(self, spec: DataSpec, hidden: int, head: tuple[int, ...], dropout: float, user_layers: int,
                 n_heads: int, ffn: int):
        super().__init__()
        self.items = item_table(spec, hidden)
        self.user_encoder = UserStateEncoder(spec, hidden, user_layers, n_heads, ffn, dropout)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.head = mlp((3 * hidden, *head, 1), dropout)

    def inputs(self, batch: Batch) -> torch.Tensor:
        """``x`` ``[B, C, 2 hidden]``: ``[e_i ; h_u]`` of every candidate."""
        return candidate_inputs(batch, self.items, self.user_encoder)

    def slate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Click logits ``[N, K]`` of slates ``x`` ``[N, K, 2 hidden]`` given in display order."""
        g, _ = self.gru(x)
        return self.head(torch.cat([g, x], dim=-1)).squeeze(-1)

    def alone_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C]``: each candidate's logit when shown alone at the first slate position."""
        batch, width, dim = x.shape
        return self.slate_logits(x.reshape(batch * width, 1, dim)).view(batch, width)


@dataclasses.dataclass
class Rollout:
    actions: torch.Tensor
    """``[B, R, K]`` chosen columns."""
    logp: torch.Tensor
    """``[B, R, K]`` log pi(a_k) (with the graph)."""
    entropy: torch.Tensor
    """``[B, R, K]`` entropy of pi_k over the allowed candidates."""
    first_logits: torch.Tensor
    """``[B, R, C]`` the pointer logits of step 0 (not masked)."""


class PointerGenerator(nn.Module):
    """Candidate encoder, LSTM decoder and pointer MLP (the generator's own parameters)."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.encoder = nn.Sequential(mlp((2 * hidden, hidden, hidden), dropout), nn.ReLU())
        self.start = nn.Parameter(torch.zeros(hidden))
        self.cell = nn.LSTMCell(hidden, hidden)
        self.cand_proj = nn.Linear(hidden, hidden)               # W_u, b
        self.state_proj = nn.Linear(hidden, hidden, bias=False)  # W_s
        self.out = nn.Linear(hidden, 1)                          # w, b'

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``u`` ``[B, C, hidden]`` from ``x`` ``[B, C, 2 hidden]``."""
        return self.encoder(x)

    def decode(self, u: torch.Tensor, mask: torch.Tensor, steps: int, rollouts: int = 1, mode: str = "sample",
               actions: torch.Tensor | None = None) -> Rollout:
        """``rollouts`` decodes of ``steps`` items per request. ``mode``: ``"sample"`` (from pi),
        ``"uniform"`` (uniform over the allowed candidates), ``"greedy"`` (arg-max of pi); or
        ``actions`` ``[B, R, steps]`` given (teacher forcing: their log-probabilities). Random
        draws come from torch's global RNG."""
        batch, width, hidden = u.shape
        if actions is not None:
            rollouts = actions.shape[1]
        cand = self.cand_proj(u)[:, None]                        # [B, 1, C, d]
        n_real = mask.sum(dim=1)
        x = self.start.expand(batch * rollouts, hidden)
        state = None
        chosen = torch.zeros(batch, rollouts, width, dtype=torch.bool, device=u.device)
        picked, logps, entropies, first = [], [], [], None
        for k in range(steps):
            h, c = self.cell(x, state)
            state = (h, c)
            hid = torch.relu(cand + self.state_proj(h).view(batch, rollouts, 1, hidden))
            logits = self.out(hid).squeeze(-1)                   # [B, R, C]
            if k == 0:
                first = logits
            # real candidates not yet chosen; once a short list has run out of them, its padded ones
            allowed = ~chosen & (mask | (n_real <= k)[:, None])[:, None, :]
            logits = logits.masked_fill(~allowed, NEG)
            logp_all = torch.log_softmax(logits, dim=-1)
            if actions is not None:
                a = actions[:, :, k]
            elif mode == "greedy":
                a = logits.argmax(dim=-1)
            elif mode == "sample":
                gumbel = -torch.log(-torch.log(torch.rand_like(logits)))
                a = (logits.detach() + gumbel).argmax(dim=-1)
            elif mode == "uniform":
                a = torch.rand_like(logits).masked_fill(~allowed, -1.0).argmax(dim=-1)
            else:
                raise ValueError(f"unknown decode mode {mode!r}")
            picked.append(a)
            logps.append(logp_all.gather(-1, a[..., None]).squeeze(-1))
            entropies.append(-(logp_all.exp() * logp_all).sum(dim=-1))
            chosen = chosen.scatter(-1, a[..., None], True)
            x = u.gather(1, a[..., None].expand(-1, -1, hidden)).reshape(batch * rollouts, hidden)
        return Rollout(torch.stack(picked, dim=-1), torch.stack(logps, dim=-1), torch.stack(entropies, dim=-1), first)


@register("egrerank", groups=("baselines",))
class EGRerank(Reranker):
    """EGRerank: list-aware GRU evaluator (BCE), then a pointer-network generator trained by PPO on its rewards."""

    family = "generator-evaluator"
    rank_derived_auc = True

    def __init__(self, spec: DataSpec, *, hidden: int = 128, dropout: float = 0.1, evaluator_mlp: str = "200-80",
                 n_random_slates: int = 2, rep_num: int = 5, reward_gamma: float = 0.01, clip: float = 0.1,
                 entropy_weight: float = 0.001, explore: float = 0.2, reward: str = "item", user_layers: int = 1,
                 n_heads: int = 4, ffn: int = 128):
        """``user_layers``/``n_heads``/``ffn`` configure the shared user-state encoder."""
        super().__init__(spec)
        if hidden < 1 or hidden % n_heads:
            raise ConfigError(f"hidden must be a positive multiple of n_heads ({n_heads}), not {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), not {dropout}")
        if n_random_slates < 0:
            raise ConfigError(f"n_random_slates must be >= 0, not {n_random_slates}")
        if rep_num < 2:
            raise ConfigError(f"rep_num must be >= 2 (advantages are standardised across the rollouts), not {rep_num}")
        if not 0.0 <= reward_gamma <= 1.0:
            raise ConfigError(f"reward_gamma must be in [0, 1], not {reward_gamma}")
        if not 0.0 < clip < 1.0:
            raise ConfigError(f"clip must be in (0, 1), not {clip}")
        if entropy_weight < 0:
            raise ConfigError(f"entropy_weight must be >= 0, not {entropy_weight}")
        if not 0.0 <= explore <= 1.0:
            raise ConfigError(f"explore must be a probability in [0, 1], not {explore}")
        if reward not in REWARDS:
            raise ConfigError(f"reward must be one of {REWARDS}, not {reward!r}")
        if not 1 <= spec.k <= spec.list_len:
            raise ConfigError(f"the slate size k={spec.k} must be in 1..list_len={spec.list_len}")
        self.k = spec.k
        self.n_random_slates = n_random_slates
        self.rep_num = rep_num
        self.reward_gamma = reward_gamma
        self.clip = clip
        self.entropy_weight = entropy_weight
        self.explore = explore
        self.reward = reward
        self.evaluator = Evaluator(spec, hidden, widths(evaluator_mlp, "evaluator_mlp"), dropout, user_layers,
                                   n_heads, ffn)
        self.generator = PointerGenerator(hidden, dropout)
        self.register_buffer("phase", torch.zeros((), dtype=torch.long))
        self._reward_sum, self._reward_batches, self._explore_batches = 0.0, 0, 0

    # --- phases ------------------------------------------------------------------------------------

    def set_phase(self, phase: int) -> None:
        self.phase.fill_(phase)

    def stages(self) -> list[Stage]:
        return [
            Stage("evaluator", [Step("evaluator", self.evaluator_loss, self.evaluator.parameters)],
                  on_start=lambda: self.set_phase(0)),
            Stage("generator", [Step("generator", self.generator_loss, self.generator.parameters)],
                  on_start=lambda: self.set_phase(1)),
        ]

    def epoch_begin(self, epoch: int) -> None:
        self._reward_sum, self._reward_batches, self._explore_batches = 0.0, 0, 0

    def epoch_log(self) -> dict[str, Any]:
        if not self._reward_batches:
            return {}
        return {"generator_reward": self._reward_sum / self._reward_batches,
                "generator_explore_batches": self._explore_batches}

    # --- scores ------------------------------------------------------------------------------------

    def evaluator_scores(self, batch: Batch) -> torch.Tensor:
        """Phase-0 scores: each candidate's evaluator logit alone at the first slate position."""
        return self.evaluator.alone_logits(self.evaluator.inputs(batch)).masked_fill(~batch.mask, -torch.inf)

    def greedy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order [B, K], first-step logits [B, C])`` of the greedy decode."""
        u = self.generator.encode(self.evaluator.inputs(batch))
        roll = self.generator.decode(u, batch.mask, self.k, rollouts=1, mode="greedy")
        return roll.actions[:, 0], roll.first_logits[:, 0]

    def generator_scores(self, batch: Batch) -> torch.Tensor:
        order, first = self.greedy(batch)
        return order_scores(order, batch.mask, first)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.generator_scores(batch) if int(self.phase) == 1 else self.evaluator_scores(batch)

    # --- losses ------------------------------------------------------------------------------------

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.generator_loss(batch) if int(self.phase) == 1 else self.evaluator_loss(batch)

    def random_slates(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B, n_random_slates, K]``: K distinct real candidates per slate (padded ones only when
        a request has fewer than K), uniformly drawn, in uniformly random order."""
        keys = torch.rand(mask.shape[0], self.n_random_slates, mask.shape[1], device=mask.device)
        return keys.masked_fill(~mask[:, None, :], -1.0).topk(self.k, dim=-1).indices

    def evaluator_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = self.evaluator.inputs(batch)
        dim = x.shape[-1]
        columns, labels = logged_slate(batch, self.k)
        logged = self.evaluator.slate_logits(x.gather(1, columns[..., None].expand(-1, -1, dim)))
        out = {"logged": bce_loss(logged, labels, batch.mask.gather(1, columns))}
        if self.n_random_slates:
            cols = self.random_slates(batch.mask).flatten(1)                 # [B, n * K]
            slates = x.gather(1, cols[..., None].expand(-1, -1, dim)).view(-1, self.k, dim)
            logits = self.evaluator.slate_logits(slates).view(cols.shape)
            out["random"] = bce_loss(logits, batch.labels.gather(1, cols), batch.mask.gather(1, cols))
        return out

    @torch.no_grad()
    def slate_rewards(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B, R, K]`` of the slates ``actions`` ``[B, R, K]`` (columns of ``x``
        ``[B, C, 2 hidden]``) from the frozen evaluator in eval mode, as ``reward`` says."""
        batch, rollouts, k = actions.shape
        dim = x.shape[-1]
        with eval_mode(self.evaluator):
            if self.reward == "item":
                alone = torch.sigmoid(self.evaluator.alone_logits(x))           # [B, C]
                chosen = alone[:, None, :].expand(-1, rollouts, -1).gather(2, actions)
                return chosen * dcg_weights(k, x.device).to(chosen.dtype)
            slates = x.gather(1, actions.reshape(batch, -1, 1).expand(-1, -1, dim)).view(batch * rollouts, k, dim)
            return torch.sigmoid(self.evaluator.slate_logits(slates)).view(batch, rollouts, k)

    def generator_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad(), eval_mode(self.evaluator):
            x = self.evaluator.inputs(batch)
        u = self.generator.encode(x)
        explore = bool(torch.rand(()) < self.explore)
        roll = self.generator.decode(u, batch.mask, self.k, self.rep_num, mode="uniform" if explore else "sample")
        real = (torch.arange(self.k, device=x.device) < batch.mask.sum(dim=1, keepdim=True))[:, None, :]
        real = real.expand_as(roll.logp).float()                             # [B, R, K]
        rewards = self.slate_rewards(x, roll.actions) * real
        advantages = standardised_advantages(rewards, self.reward_gamma)
        objective = ppo_objective(roll.logp, roll.logp.detach(), advantages, self.clip)
        n = real.sum().clamp(min=1)
        self._reward_sum += float(rewards.sum() / n)
        self._reward_batches += 1
        self._explore_batches += int(explore)
        return {"ppo": -(objective * real).sum() / n,
                "entropy": -self.entropy_weight * (roll.entropy * real).sum() / n}
