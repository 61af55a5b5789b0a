"""DCDR (methods.md §5.2) on real ml-100k lists: the discrete forward process (swap/replace
corruption), the conditional reverse model, beam search with per-request early stopping, the
evaluator's pick, and what it may not read."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.blocks import dcg_weights, logged_slate
from baselines.dcdr import DCDR
from benchmark import registry
from benchmark.errors import ConfigError
from helpers import build, scores

K = 6


def distinct(rows: torch.Tensor) -> bool:
    """Every row of ``rows`` ``[..., K]`` holds K different columns."""
    flat = rows.reshape(-1, rows.shape[-1])
    return all(len(set(r.tolist())) == flat.shape[1] for r in flat)


def padded_batch(batch):
    """Half the requests lose candidate column 2 (inside the starting top-6) and every request its
    last 20 candidates."""
    mask = batch.mask.clone()
    mask[:, 30:] = False
    mask[::2, 2] = False
    return dataclasses.replace(batch, mask=mask)


# --- forward process ------------------------------------------------------------------------------

def test_corruption_at_both_ends(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    x0, _ = logged_slate(tiny_batch, K, positives_first=False)
    n = len(tiny_batch)
    torch.manual_seed(1)
    assert torch.equal(model.corrupt(x0, torch.zeros(n, dtype=torch.long), tiny_batch.mask), x0)
    for _ in range(5):
        xt = model.corrupt(x0, torch.full((n,), model.diffusion_steps), tiny_batch.mask)
        assert (xt != x0).all()  # every slot corrupted at t = T
        assert distinct(xt) and tiny_batch.mask.gather(1, xt).all()
    assert model.keep_prob(torch.tensor([0, model.diffusion_steps])).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_corruption_grows_with_t_and_follows_the_keep_schedule(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    x0, _ = logged_slate(tiny_batch, K, positives_first=False)
    x0, mask = x0.repeat(40, 1), tiny_batch.mask.repeat(40, 1)  # 2560 slates per step
    torch.manual_seed(2)
    changed = []
    for t in range(model.diffusion_steps + 1):
        xt = model.corrupt(x0, torch.full((len(x0),), t), mask)
        assert distinct(xt) and mask.gather(1, xt).all()
        changed.append((xt != x0).float().mean().item())
        # a corrupted slot always changes item (lone swaps become replacements), so the changed
        # share is 1 - ᾱ_t up to sampling noise
        assert changed[-1] == pytest.approx(1 - model.keep_prob(torch.tensor(t)).item(), abs=0.02)
    assert all(a < b for a, b in zip(changed, changed[1:]))


def test_the_two_operations(tiny_spec, tiny_batch):
    """swap_prob = 1: permutation-level only (the slate keeps its items, in another order);
    swap_prob = 0: token-level only (every changed slot holds an item from outside x_0)."""
    x0, _ = logged_slate(tiny_batch, K, positives_first=False)
    t = torch.full((len(x0),), 5)
    torch.manual_seed(3)
    swaps = build("dcdr", tiny_spec, swap_prob=1.0).corrupt(x0, t, tiny_batch.mask)
    swapped = swaps != x0
    assert swapped.any()
    assert torch.equal(swaps.sort(1).values[swapped.sum(1) != 1], x0.sort(1).values[swapped.sum(1) != 1])
    replaced = build("dcdr", tiny_spec, swap_prob=0.0).corrupt(x0, t, tiny_batch.mask)
    outside = ~(replaced[:, :, None] == x0[:, None, :]).any(-1)
    assert (replaced != x0).any() and torch.equal(outside, replaced != x0)


def test_corruption_never_draws_padded_candidates(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    batch = padded_batch(tiny_batch)
    x0, _ = logged_slate(batch, K, positives_first=False)
    assert batch.mask.gather(1, x0).all()
    torch.manual_seed(4)
    for t in (3, 7, 10):
        xt = model.corrupt(x0.repeat(10, 1), torch.full((10 * len(x0),), t), batch.mask.repeat(10, 1))
        assert batch.mask.repeat(10, 1).gather(1, xt).all() and distinct(xt)


# --- reverse process: decoding, steps, early stopping ------------------------------------------------

def _unit_model(**hparams):
    from benchmark.api import DataSpec

    return DCDR(DataSpec("unit", n_users=2, n_items=5, list_len=3, history_len=2, k=2), hidden=8, n_heads=2, ffn=8,
                **hparams)


def test_slot_beam_search_by_hand():
    model = _unit_model(beam=3)
    logp = torch.tensor([[[0.5, 0.4, 0.1], [0.6, 0.3, 0.1]]]).log()
    lists, total = model.decode(logp, torch.ones(1, 3, dtype=torch.bool))
    # distinct items only: (1,0) .24 > (0,1) .15 > (2,0) .06 > (0,2) .05 ...; (0,0) .30 is not allowed
    assert lists[0].tolist() == [[1, 0], [0, 1], [2, 0]]
    assert total[0].exp().tolist() == pytest.approx([0.24, 0.15, 0.06])
    # a padded candidate is taken only when no real one is left
    lists, _ = model.decode(logp, torch.tensor([[False, True, True]]))
    assert lists[0, :2].tolist() == [[1, 2], [2, 1]] and 0 in lists[0, 2].tolist()


def _identity(c, slates, cond, t, mask):
    """A reverse model that predicts x_0 = x_t."""
    width = c.shape[1]
    hit = slates[..., None] == torch.arange(width)
    return torch.log_softmax(torch.where(hit, 5.0, 0.0).masked_fill(~mask[:, None, None, :], -torch.inf), -1)


def _shift(c, slates, cond, t, mask):
    """A reverse model that predicts every item moved K columns on: the list always changes."""
    return _identity(c, (slates + K) % c.shape[1], cond, t, mask)


def test_reverse_steps_and_early_stopping(tiny_spec, tiny_batch, monkeypatch):
    model = build("dcdr", tiny_spec)
    with torch.no_grad():
        model.generate(tiny_batch)
    assert 1 <= model.last_steps <= model.sample_steps == 4
    monkeypatch.setattr(model, "denoise", _shift)
    with torch.no_grad():
        _, beams, _, _ = model.generate(tiny_batch)
    assert model.last_steps == 4 and (beams[:, 0] == (torch.arange(K) + 4 * K) % 50).all()
    model.sample_steps = 2
    with torch.no_grad():
        model.generate(tiny_batch)
    assert model.last_steps == 2
    model.sample_steps = 4
    monkeypatch.setattr(model, "denoise", _identity)
    with torch.no_grad():
        _, beams, _, _ = model.generate(tiny_batch)
    assert model.last_steps == 1 and (beams[:, 0] == torch.arange(K)).all()  # stopped: the list did not change


def test_early_stopping_is_per_request(tiny_spec, tiny_batch, monkeypatch):
    """Requests whose list stops changing are frozen while the others go on; a frozen request's
    beams are those it would have alone, even though the model would move them at later steps."""
    model = build("dcdr", tiny_spec)
    half = torch.arange(len(tiny_batch)) % 2 == 0

    def mixed(c, slates, cond, t, mask):
        still = (half[:, None] & (t == model.diffusion_steps))[..., None, None]  # only at the first step
        return torch.where(still, _identity(c, slates, cond, t, mask), _shift(c, slates, cond, t, mask))

    monkeypatch.setattr(model, "denoise", _identity)
    with torch.no_grad():
        _, alone, _, _ = model.generate(tiny_batch)
    monkeypatch.setattr(model, "denoise", mixed)
    with torch.no_grad():
        _, beams, _, _ = model.generate(tiny_batch)
    assert model.last_steps == 4
    assert torch.equal(beams[half], alone[half])
    assert (beams[~half, 0] == (torch.arange(K) + 4 * K) % 50).all()


def test_beams_are_distinct_lists_of_distinct_real_candidates(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    batch = padded_batch(tiny_batch)
    assert not torch.equal(model.start_list(batch.mask), model.start_list(tiny_batch.mask))
    assert batch.mask.gather(1, model.start_list(batch.mask)).all()
    with torch.no_grad():
        final, beams, beam_logp, _ = model.generate(batch)
        out = model.score(batch)
    assert beams.shape == (64, model.beam, K) and torch.isfinite(beam_logp).all()
    assert distinct(beams) and distinct(final)
    real = batch.mask[:, None, :].expand(-1, model.beam, -1)
    assert real.gather(2, beams).all() and batch.mask.gather(1, final).all()  # never a padded column
    assert all(len({tuple(b) for b in row.tolist()}) == model.beam for row in beams)  # merged duplicates
    assert (beam_logp[:, :-1] >= beam_logp[:, 1:]).all()
    # the score puts the final list on top, in order; padded slots -inf, the rest finite
    assert torch.equal(torch.argsort(out, dim=1, descending=True, stable=True)[:, :K], final)
    assert torch.isneginf(out[~batch.mask]).all() and torch.isfinite(out[batch.mask]).all()
    wide = build("dcdr", tiny_spec, beam=7)
    with torch.no_grad():
        assert wide.generate(batch)[1].shape == (64, 7, K)
        assert build("dcdr", tiny_spec, beam=1).generate(batch)[1].shape == (64, 1, K)


# --- condition and evaluator ------------------------------------------------------------------------

def test_the_condition_changes_the_predictions(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    with torch.no_grad():
        c, _ = model.context(tiny_batch)
        slates = model.start_list(tiny_batch.mask)[:, None, :]
        t = torch.full((64, 1), 4)
        ones = model.denoise(c, slates, torch.ones(64, 1, K, dtype=torch.long), t, tiny_batch.mask)
        zeros = model.denoise(c, slates, torch.zeros(64, 1, K, dtype=torch.long), t, tiny_batch.mask)
        later = model.denoise(c, slates, torch.ones(64, 1, K, dtype=torch.long), t + 5, tiny_batch.mask)
    assert not torch.allclose(ones, zeros, atol=1e-4) and not torch.allclose(ones, later, atol=1e-4)
    # in training the condition is the logged responses: other labels, another denoising loss
    flipped = dataclasses.replace(tiny_batch, labels=1.0 - tiny_batch.labels * tiny_batch.exposed)
    torch.manual_seed(5)
    a = model.loss(tiny_batch)["denoise"]
    torch.manual_seed(5)
    b = model.loss(flipped)["denoise"]
    assert not torch.isclose(a, b)


def test_list_value_by_hand():
    logits = torch.tensor([[0.0, 100.0, -100.0, 100.0]])
    slates = torch.tensor([[[1, 0, 3], [0, 2, 1]]])
    w = [1.0, 1 / math.log2(3), 0.5]
    value = _unit_model().list_value(slates, logits)
    assert value[0].tolist() == pytest.approx([w[0] + 0.5 * w[1] + w[2], 0.5 * w[0] + w[2]])
    assert dcg_weights(3).tolist() == pytest.approx(w)


def test_the_evaluator_picks_the_final_list(tiny_spec, tiny_batch, monkeypatch):
    model = build("dcdr", tiny_spec)
    with torch.no_grad():
        final, beams, _, logits = model.generate(tiny_batch)
    value = model.list_value(beams, logits)
    assert torch.equal(final, beams[torch.arange(64), value.argmax(1)])
    # an evaluator that prefers the least likely beam
    monkeypatch.setattr(model, "list_value", lambda slates, _: torch.arange(slates.shape[1], dtype=torch.float32)
                        .expand(slates.shape[0], -1))
    with torch.no_grad():
        final, beams, _, _ = model.generate(tiny_batch)
        out = model.score(tiny_batch)
    assert torch.equal(final, beams[:, -1]) and not torch.equal(final, beams[:, 0])
    assert torch.equal(torch.argsort(out, dim=1, descending=True, stable=True)[:, :K], beams[:, -1])


# --- training, inputs, settings -----------------------------------------------------------------------

def test_adam_steps_reduce_both_losses(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec, hidden=32, dropout=0.0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(6)
    history = []
    for _ in range(25):
        optimiser.zero_grad()
        parts = model.loss(tiny_batch)
        sum(parts.values()).backward()
        optimiser.step()
        history.append({k: float(v.detach()) for k, v in parts.items()})
    for part in ("denoise", "evaluator"):
        assert history[-1][part] < 0.8 * history[0][part]


def test_never_reads_the_retriever_score(tiny_spec, tiny_batch):
    model = build("dcdr", tiny_spec)
    assert not model.uses_retriever_score
    nan = dataclasses.replace(tiny_batch, scores=torch.full_like(tiny_batch.scores, torch.nan))
    assert torch.equal(scores(model, nan), scores(model, tiny_batch))


def test_registration_and_settings(tiny_spec):
    entry = registry.get("dcdr")
    assert entry.family == "diffusion" and entry.groups == ("baselines",) and entry.cls.rank_derived_auc
    params = entry.hyperparameters()
    assert params["hidden"] == 128 and "dropout" in params and not {"alpha", "lam", "switch_epoch"} & set(params)
    assert DCDR(tiny_spec, diffusion_steps=10, sample_steps=4).timesteps() == [10, 7, 4, 1]
    for bad in ({"diffusion_steps": 0}, {"sample_steps": 0}, {"sample_steps": 11}, {"beam": 0},
                {"swap_prob": 1.5}, {"swap_prob": -0.1}, {"denoise_layers": 0}):
        with pytest.raises(ConfigError):
            registry.build("dcdr", tiny_spec, **bad)
