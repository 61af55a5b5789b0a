"""DiffuRec (methods.md §5.1): the trunc_lin schedule, the forward process, the length of the
reverse chain, seeded inference, the candidate vs catalogue cross-entropy, and what it reads."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.diffurec import DiffuRec, trunc_lin_betas
from benchmark.errors import ConfigError
from helpers import build, scores

FAST = {"sample_steps": 4}  # most tests do not need the full 32-step chain


def rows(batch, index):
    """The requests ``index`` of ``batch`` (every field sliced)."""
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[index] for f in dataclasses.fields(batch)})


def expected_betas(steps):
    scale = 1000 / steps
    start, end = 0.01 + 1e-4 * scale, 0.01 + 0.02 * scale
    if end > 1:
        end = 0.01 + 0.001 * scale
    return [start + (end - start) * i / max(steps - 1, 1) for i in range(steps)]


# --- the diffusion process ------------------------------------------------------------------------

@pytest.mark.parametrize("steps, first, last", [(32, 0.013125, 0.635), (10, 0.02, 0.11), (1, 0.11, 0.11)])
def test_trunc_lin_schedule(steps, first, last):
    betas = trunc_lin_betas(steps)
    assert betas.shape == (steps,)
    assert betas[0].item() == pytest.approx(first) and betas[-1].item() == pytest.approx(last)
    assert torch.allclose(betas, torch.tensor(expected_betas(steps), dtype=torch.float64))
    assert bool(((betas > 0) & (betas < 1)).all())
    if steps > 1:
        assert bool((betas[1:] > betas[:-1]).all())  # strictly increasing


def test_alphas_cumprod_is_the_product(tiny_spec):
    model = DiffuRec(tiny_spec)
    product, expected = 1.0, []
    for beta in expected_betas(32):
        product *= 1.0 - beta
        expected.append(product)
    assert torch.allclose(model.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(model.betas.double(), torch.tensor(expected_betas(32), dtype=torch.float64))


@pytest.mark.parametrize("init_std", [0.1, 1.0])
def test_item_table_initialisation(tiny_spec, init_std):
    weight = build("diffurec", tiny_spec, init_std=init_std).items.weight
    assert (weight[0] == 0).all()  # padding
    assert weight[1:].std().item() == pytest.approx(init_std, rel=0.05)


def test_q_sample_closed_form(tiny_spec):
    model = DiffuRec(tiny_spec, hidden=8, n_heads=2)
    x0 = torch.arange(24, dtype=torch.float32).view(3, 8) / 10
    noise = torch.linspace(-1, 1, 24).view(3, 8)
    t = torch.tensor([0, 5, 31])
    betas = expected_betas(32)
    for row, step in enumerate(t.tolist()):
        abar = math.prod(1.0 - b for b in betas[:step + 1])
        want = math.sqrt(abar) * x0[row] + math.sqrt(1 - abar) * noise[row]
        assert torch.allclose(model.q_sample(x0, t, noise)[row], want, atol=1e-6)
    # t = 0 keeps almost all of x0, the last step is almost pure noise (ᾱ_31 ≈ 1e-6)
    assert model.alphas_cumprod[0].item() == pytest.approx(1 - 0.013125)
    assert model.alphas_cumprod[-1].item() < 1e-5


def test_full_chain_is_the_ddpm_posterior(tiny_spec):
    """With sample_steps = T every step goes t -> t-1 with the usual posterior coefficients and
    the original's variance β_t; the last step returns x̂_0 itself (coefficients 1, 0)."""
    model = DiffuRec(tiny_spec)
    betas = torch.tensor(expected_betas(32), dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    for t, c_x0, c_xt, var in model._chain:
        prev = abar[t - 1].item() if t > 0 else 1.0
        assert c_x0 == pytest.approx(betas[t].item() * math.sqrt(prev) / (1 - abar[t].item()))
        assert c_xt == pytest.approx((1 - prev) * math.sqrt(1 - betas[t].item()) / (1 - abar[t].item()))
        assert var == pytest.approx(betas[t].item())
    assert model._chain[-1][:3] == (0, pytest.approx(1.0), pytest.approx(0.0))


@pytest.mark.parametrize("sample_steps, visited", [
    (32, list(range(31, -1, -1))), (5, [31, 23, 16, 8, 0]), (1, [31])])
def test_reverse_chain_runs_the_configured_steps(tiny_spec, tiny_batch, sample_steps, visited):
    model = build("diffurec", tiny_spec, sample_steps=sample_steps)
    seen = []
    handle = model.approximator.register_forward_hook(lambda mod, args, out: seen.append(args[3].unique().tolist()))
    out = scores(model, rows(tiny_batch, slice(0, 4)))
    assert [s[0] for s in seen] == visited and all(len(s) == 1 for s in seen)
    assert torch.isfinite(out).all()
    seen.clear()
    model.train()
    model.loss(rows(tiny_batch, slice(0, 4)))
    handle.remove()
    assert len(seen) == 1  # training: one approximator call at a random step


# --- inference ------------------------------------------------------------------------------------

def test_inference_is_seeded_and_leaves_the_global_rng_alone(tiny_spec, tiny_batch):
    batch = rows(tiny_batch, slice(0, 16))
    model = build("diffurec", tiny_spec, **FAST)
    state = torch.random.get_rng_state()
    first = scores(model, batch)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(scores(model, batch), first)
    other = build("diffurec", tiny_spec, sample_seed=1, **FAST)
    other.load_state_dict(model.state_dict())
    assert not torch.allclose(scores(other, batch), first)
    mean = build("diffurec", tiny_spec, inference_lambda="mean", **FAST)
    assert torch.equal(scores(mean, batch), scores(mean, batch))


def test_scores_are_x0_dot_candidate_embeddings(tiny_spec, tiny_batch):
    batch = rows(tiny_batch, slice(0, 8))
    mask = batch.mask.clone()
    mask[0, 10:] = False
    batch = dataclasses.replace(batch, mask=mask)
    model = build("diffurec", tiny_spec, **FAST)
    out = scores(model, batch)
    with torch.no_grad():
        x0 = model.sample_x0(batch)
        want = (x0[:, None, :] * model.items(batch.items)).sum(-1)
    assert torch.isneginf(out[0, 10:]).all() and torch.isfinite(out[mask]).all()
    assert torch.allclose(out[mask], want[mask], atol=1e-4)
    assert not model.rank_derived_auc and model.family == "diffusion"


def test_uses_the_history_not_the_retriever_score_nor_the_order(tiny_spec, tiny_batch):
    batch = rows(tiny_batch, slice(0, 8))
    model = build("diffurec", tiny_spec, **FAST)
    base = scores(model, batch)
    # other history items in rows 0-3: their scores change, the other rows' do not
    hist = batch.hist_items.clone()
    real = hist[:4] > 0
    hist[:4] = torch.where(real, (hist[:4] % tiny_spec.n_items) + 1, hist[:4])
    changed = scores(model, dataclasses.replace(batch, hist_items=hist))
    assert ((changed[:4] - base[:4]).abs().amax(dim=1) > 1e-3).all()
    assert torch.allclose(changed[4:], base[4:], atol=1e-5)
    # whatever sits in the padded slots of a history is masked out
    padded = batch.hist_items == 0
    assert padded.any()
    junk = dataclasses.replace(batch, hist_items=torch.where(padded, 7, batch.hist_items))
    assert torch.allclose(scores(model, junk), base, atol=1e-5)
    # the retriever score is never read; permuting the candidates permutes the scores
    assert torch.equal(scores(model, dataclasses.replace(batch, scores=torch.rand_like(batch.scores))), base)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    permuted = dataclasses.replace(batch, items=batch.items[:, perm], scores=batch.scores[:, perm],
                                   labels=batch.labels[:, perm], mask=batch.mask[:, perm])
    assert torch.allclose(scores(model, permuted), base[:, perm], atol=1e-5)


def test_empty_histories(tiny_spec, tiny_batch):
    batch = rows(tiny_batch, slice(0, 8))
    hist_len = batch.hist_len.clone()
    hist_len[:3] = 0
    hist = torch.where(torch.arange(batch.hist_items.shape[1]) >= batch.hist_items.shape[1] - hist_len[:, None],
                       batch.hist_items, 0)
    batch = dataclasses.replace(batch, hist_items=hist, hist_len=hist_len)
    model = build("diffurec", tiny_spec, **FAST)
    out = scores(model, batch)
    assert torch.isfinite(out).all()
    # the empty rows read the learned "empty history" vector, the others do not
    with torch.no_grad():
        model.empty_history += torch.linspace(-1, 1, model.empty_history.numel())  # not a constant: LN removes those
    moved = scores(model, batch)
    empty = hist_len == 0
    assert ((moved[empty] - out[empty]).abs().amax(dim=1) > 1e-3).all()
    assert torch.allclose(moved[~empty], out[~empty], atol=1e-5) and (~empty).any()
    everything_empty = dataclasses.replace(batch, hist_items=torch.zeros_like(hist),
                                           hist_len=torch.zeros_like(hist_len))
    assert torch.isfinite(scores(model, everything_empty)).all()
    model.train()
    loss = model.loss(everything_empty)["ce"]
    loss.backward()
    assert torch.isfinite(loss) and model.empty_history.grad.abs().sum() > 0


# --- training -------------------------------------------------------------------------------------

class FixedX0(torch.nn.Module):
    """A stand-in approximator that returns a known x̂_0 per row."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, history, valid, x_t, t, lam):
        return self.x0[: history.shape[0]]


def one_positive_each(batch):
    """The requests with a positive, each keeping only its first positive (a known target)."""
    keep = (batch.labels > 0.5).any(dim=1).nonzero().squeeze(1)
    batch = rows(batch, keep)
    first = torch.argmax(batch.labels, dim=1)
    labels = torch.zeros_like(batch.labels).scatter(1, first[:, None], 1.0)
    return dataclasses.replace(batch, labels=labels), first


def test_cross_entropy_by_hand(tiny_spec, tiny_batch):
    batch, column = one_positive_each(rows(tiny_batch, slice(0, 16)))
    x0 = torch.randn(len(batch), 128, generator=torch.Generator().manual_seed(0))
    for ce_over in ("candidates", "catalogue"):
        model = build("diffurec", tiny_spec, ce_over=ce_over)
        model.approximator = FixedX0(x0)
        got = model.loss(batch)["ce"]
        with torch.no_grad():
            if ce_over == "candidates":
                want = torch.nn.functional.cross_entropy((x0[:, None] * model.items(batch.items)).sum(-1), column)
            else:
                target = batch.items.gather(1, column[:, None]).squeeze(1)
                want = torch.nn.functional.cross_entropy(x0 @ model.items.weight[1:].T, target - 1)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_candidate_ce_ignores_items_outside_the_list(tiny_spec, tiny_batch):
    """ce_over="candidates": an item in neither the candidates nor the history gets no gradient
    (the softmax is over the 50 candidates); ce_over="catalogue": it does (a negative class)."""
    batch = rows(tiny_batch, slice(0, 16))
    used = set(batch.items.flatten().tolist()) | set(batch.hist_items.flatten().tolist())
    outside = next(i for i in range(1, tiny_spec.n_items + 1) if i not in used)
    grads = {}
    for ce_over in ("candidates", "catalogue"):
        model = build("diffurec", tiny_spec, ce_over=ce_over)
        torch.manual_seed(0)
        model.loss(batch)["ce"].backward()
        grads[ce_over] = model.items.weight.grad
        assert grads[ce_over][list(used - {0})].abs().sum() > 0
    assert grads["candidates"][outside].abs().sum() == 0
    assert grads["catalogue"][outside].abs().sum() > 0
    # and so the candidate loss does not move when that item's embedding does
    model = build("diffurec", tiny_spec)
    torch.manual_seed(0)
    before = model.loss(batch)["ce"].item()
    with torch.no_grad():
        model.items.weight[outside] += 5.0
    torch.manual_seed(0)
    assert model.loss(batch)["ce"].item() == before


def test_requests_without_positives_add_nothing(tiny_spec, tiny_batch):
    batch = rows(tiny_batch, slice(0, 16))
    labels = batch.labels.clone()
    labels[::3] = 0.0  # rows 0, 3, 6, ... lose their positives
    batch = dataclasses.replace(batch, labels=labels)
    with_pos = (labels > 0.5).any(dim=1).nonzero().squeeze(1)
    assert 0 < len(with_pos) < len(batch)
    model = build("diffurec", tiny_spec)  # eval mode: no dropout, so the shapes of the draws are all that matters
    torch.manual_seed(0)
    full = model.loss(batch)["ce"]
    torch.manual_seed(0)
    only = model.loss(rows(batch, with_pos))["ce"]
    assert full.item() == pytest.approx(only.item(), rel=1e-6)
    none = model.loss(dataclasses.replace(batch, labels=torch.zeros_like(labels)))["ce"]
    none.backward()
    assert none.item() == 0.0


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("hparams", [
    {"diffusion_steps": 0}, {"sample_steps": 0}, {"sample_steps": 33}, {"diffusion_steps": 8, "sample_steps": 32},
    {"ce_over": "all"}, {"inference_lambda": "zero"}, {"lambda_std": -0.1}, {"lambda_mean": float("nan")},
    {"hidden": 130}, {"n_layers": 0}, {"dropout": 1.0}, {"emb_dropout": -0.1}, {"init_std": 0.0},
    {"eval_every": 0}])
def test_bad_hyperparameters(tiny_spec, hparams):
    with pytest.raises(ConfigError):
        build("diffurec", tiny_spec, **hparams)


def test_validates_every_eval_every_epochs(tiny_spec):
    """Its one stage carries ``eval_every`` (default 5) to the trainer (tests/test_trainer.py shows
    what the trainer does with it)."""
    assert [(s.name, s.eval_every) for s in build("diffurec", tiny_spec).stages()] == [("main", 5)]
    assert build("diffurec", tiny_spec, eval_every=1).stages()[0].eval_every == 1
