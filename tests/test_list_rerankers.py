"""MiDNN, DLCM, SetRank and MIR (methods.md §2.4, §3.1, §3.2, §3.4) on real ml-100k lists: the
mechanism that sets each apart, the shared attention-rank loss, and what each may not read."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.losses import attention_rank_loss
from baselines.midnn import list_min_max
from benchmark import registry
from benchmark.errors import ConfigError
from helpers import build, scores

SLUGS = ("midnn", "dlcm", "setrank", "mir")




def permute_columns(batch, perm):
    return dataclasses.replace(batch, **{f: getattr(batch, f)[:, perm] for f in ("items", "scores", "labels", "mask")})


PERM = torch.randperm(50, generator=torch.Generator().manual_seed(1))


# --- the attention-rank loss (DLCM's loss; used by DLCM and SetRank) ---------------------------------

def test_attention_rank_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    lse = math.log(math.e + math.e ** 2 + math.e ** 3)
    # two positives: target (1/2, 0, 1/2); loss = -(log p_1 + log p_3) / 2 = lse - (1 + 3) / 2
    binary = attention_rank_loss(logits, torch.tensor([[1.0, 0.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert binary.item() == pytest.approx(lse - 2.0, abs=1e-6)
    # graded labels: target exp(y) over the positives only, (e^2, e, 0) / (e^2 + e)
    graded = attention_rank_loss(logits, torch.tensor([[2.0, 1.0, 0.0]]), torch.ones(1, 3, dtype=torch.bool))
    a1, a2 = math.e ** 2 / (math.e ** 2 + math.e), math.e / (math.e ** 2 + math.e)
    assert graded.item() == pytest.approx(-(a1 * (1 - lse) + a2 * (2 - lse)), abs=1e-6)
    # a padded slot takes part in neither distribution, whatever its logit and label
    padded = attention_rank_loss(torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1.0, 0.0, 1.0, 1.0]]),
                                 torch.tensor([[True, True, True, False]]))
    assert padded.item() == pytest.approx(lse - 2.0, abs=1e-6)


def test_attention_rank_loss_skips_lists_without_positives():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss = attention_rank_loss(logits, labels, mask)
    assert loss.item() == pytest.approx(attention_rank_loss(logits[:1], labels[:1], mask[:1]).item(), abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all() and (logits.grad[0] != 0).any()
    # no positive anywhere (and a row with no real slot): 0, finite gradients
    none = torch.tensor([[0.3, 0.1, -2.0], [1.0, 1.0, 1.0]], requires_grad=True)
    empty_row = torch.tensor([[True, True, True], [False, False, False]])
    zero = attention_rank_loss(none, torch.zeros(2, 3), empty_row)
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(none.grad).all()


# --- order: which models see the initial order ----------------------------------------------------

@pytest.mark.parametrize("slug, hparams, equivariant", [
    ("setrank", {}, True), ("setrank", {"block": "imsab"}, True), ("setrank", {"ordinal": True}, False),
    ("midnn", {}, True), ("mir", {}, True), ("dlcm", {}, False), ("dlcm", {"feed": "top-down"}, False)])
def test_permuting_the_candidates(tiny_spec, tiny_batch, slug, hparams, equivariant):
    """Order-free models give the permuted scores for a permuted list; DLCM and SetRank_init do not."""
    model = build(slug, tiny_spec, **hparams)
    same = torch.allclose(scores(model, permute_columns(tiny_batch, PERM)), scores(model, tiny_batch)[:, PERM],
                          atol=1e-5)
    assert same == equivariant


def test_dlcm_feed_order():
    model = build("dlcm", _spec())  # the default direction is the paper's bottom-up
    top_down = build("dlcm", _spec(), feed="top-down")
    full = torch.ones(2, 5, dtype=torch.bool)
    assert model.feed_order(full)[0].tolist() == [[4, 3, 2, 1, 0]] * 2
    assert top_down.feed_order(full)[0].tolist() == [[0, 1, 2, 3, 4]] * 2
    # padded slots go last, whatever the direction, and the real ones keep (or reverse) their order
    mask = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]])
    order, n_real = model.feed_order(mask)
    assert order.tolist() == [[3, 2, 0, 1, 4], [4, 3, 2, 1, 0]] and n_real.tolist() == [3, 5]
    assert top_down.feed_order(mask)[0].tolist() == [[0, 2, 3, 1, 4], [0, 1, 2, 3, 4]]


def test_dlcm_direction_changes_the_scores(tiny_spec, tiny_batch):
    bottom_up, top_down = build("dlcm", tiny_spec), build("dlcm", tiny_spec, feed="top-down")
    assert bottom_up.state_dict().keys() == top_down.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(bottom_up.state_dict().values(), top_down.state_dict().values()))
    assert not torch.allclose(scores(bottom_up, tiny_batch), scores(top_down, tiny_batch), atol=1e-4)


def _spec():
    from benchmark.api import DataSpec

    return DataSpec("unit", n_users=4, n_items=10, list_len=5, history_len=3, k=2)


# --- MiDNN: list-level min-max features -------------------------------------------------------------

def test_list_min_max_by_hand():
    x = torch.tensor([[[0.0, 5.0], [2.0, 5.0], [1.0, 5.0], [9.0, -9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    g = list_min_max(x, mask)
    # dimension 0 spans 0..2 over the real rows; dimension 1 is constant there (guard: 0); padded row: 0
    assert torch.allclose(g[0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0], [0.0, 0.0]]))
    empty = list_min_max(x, torch.zeros(1, 4, dtype=torch.bool))
    assert (empty == 0).all()


def test_midnn_scores_depend_on_the_other_candidates(tiny_spec, tiny_batch):
    model = build("midnn", tiny_spec)
    items = tiny_batch.items.clone()
    items[:, 10] = (items[:, 10] % tiny_spec.n_items) + 1  # another item in one slot
    out, changed = scores(model, tiny_batch), scores(model, dataclasses.replace(tiny_batch, items=items))
    others = torch.arange(50) != 10
    assert not torch.allclose(out[:, others], changed[:, others], atol=1e-6)


def test_midnn_list_of_identical_items_is_finite(tiny_spec, tiny_batch):
    model = build("midnn", tiny_spec)
    same = dataclasses.replace(tiny_batch, items=tiny_batch.items[:, :1].expand(-1, 50).contiguous())
    out = scores(model, same)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, out[:, :1].expand_as(out))  # identical candidates, identical scores
    model.train()
    model.loss(same).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- MIR: history, empty history, personalised time decay -------------------------------------------

def test_mir_reads_the_history(tiny_spec, tiny_batch):
    model = build("mir", tiny_spec)
    other = dataclasses.replace(tiny_batch, hist_items=tiny_batch.hist_items.roll(1, dims=0),
                                hist_labels=tiny_batch.hist_labels.roll(1, dims=0),
                                hist_len=tiny_batch.hist_len.roll(1, dims=0))
    assert not torch.allclose(scores(model, other), scores(model, tiny_batch), atol=1e-5)


def test_mir_empty_history_is_finite(tiny_spec, tiny_batch):
    model = build("mir", tiny_spec)
    empty = dataclasses.replace(tiny_batch, hist_items=torch.zeros_like(tiny_batch.hist_items),
                                hist_labels=torch.zeros_like(tiny_batch.hist_labels),
                                hist_len=torch.zeros_like(tiny_batch.hist_len))
    assert torch.isfinite(scores(model, empty)).all()
    mixed = dataclasses.replace(tiny_batch, hist_len=tiny_batch.hist_len * (torch.arange(64) % 2))
    assert torch.isfinite(scores(model, mixed)).all()
    model.train()
    model.loss(empty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mir_padded_history_slots_are_ignored(tiny_spec, tiny_batch):
    """Only the last hist_len slots count: junk in the padding changes nothing."""
    model = build("mir", tiny_spec)
    short = dataclasses.replace(tiny_batch, hist_len=tiny_batch.hist_len.clamp(max=10))
    junk = dataclasses.replace(short, hist_items=torch.cat([tiny_batch.hist_items[:, :40].flip(0),
                                                            tiny_batch.hist_items[:, 40:]], 1))
    assert torch.allclose(scores(model, short), scores(model, junk), atol=1e-5)


def test_mir_time_decay_is_per_user_and_used(tiny_spec, tiny_batch):
    model = build("mir", tiny_spec)
    decay = model.decay(tiny_batch, 50)
    assert decay.shape == (64, 50) and torch.allclose(decay[:, -1], torch.ones(64))  # most recent: no decay
    assert ((decay[:, :-1] - decay[:, 1:]) <= 0).all() and (decay > 0).all()       # older: more decay
    # the rate is personal: the user id (used nowhere else) changes the scores
    other_users = dataclasses.replace(tiny_batch, user=(tiny_batch.user + 1) % tiny_spec.n_users)
    assert not torch.allclose(model.decay(other_users, 50), decay)
    assert not torch.allclose(scores(model, other_users), scores(model, tiny_batch), atol=1e-5)
    # switching the decay off (rate ~ 0, factor 1 everywhere) changes the scores
    before = scores(model, tiny_batch)
    with torch.no_grad():
        model.decay_rate[-1].bias.fill_(-50.0)
    assert torch.allclose(model.decay(tiny_batch, 50), torch.ones(64, 50), atol=1e-6)
    assert not torch.allclose(scores(model, tiny_batch), before, atol=1e-5)


# --- shared rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("slug", SLUGS)
def test_never_reads_the_retriever_score(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    assert not model.uses_retriever_score
    noise = dataclasses.replace(tiny_batch, scores=torch.rand(tiny_batch.scores.shape,
                                                               generator=torch.Generator().manual_seed(3)))
    nan = dataclasses.replace(tiny_batch, scores=torch.full_like(tiny_batch.scores, torch.nan))
    out = scores(model, tiny_batch)
    assert out.shape == (64, 50) and torch.isfinite(out).all()
    assert torch.equal(scores(model, noise), out) and torch.equal(scores(model, nan), out)


@pytest.mark.parametrize("slug, hparams", [("midnn", {}), ("dlcm", {}), ("dlcm", {"feed": "top-down"}),
                                           ("setrank", {}), ("setrank", {"block": "imsab"}), ("mir", {})])
def test_padded_candidates_are_ignored(tiny_spec, tiny_batch, slug, hparams):
    model = build(slug, tiny_spec, **hparams)
    mask = tiny_batch.mask.clone()
    mask[:, 40:] = False
    padded = dataclasses.replace(tiny_batch, mask=mask)
    changed = dataclasses.replace(padded, items=torch.cat([tiny_batch.items[:, :40], tiny_batch.items[:, :10]], 1))
    out, out_changed = scores(model, padded), scores(model, changed)
    assert torch.isneginf(out[:, 40:]).all() and torch.isfinite(out[:, :40]).all()
    assert torch.allclose(out[:, :40], out_changed[:, :40], atol=1e-5)
    assert torch.isfinite(model.train().loss(padded))


@pytest.mark.parametrize("slug", SLUGS)
def test_adam_steps_reduce_the_loss(tiny_spec, tiny_batch, slug):
    """BCE can approach 0; the attention-rank loss only the entropy of its target, mean log(#positives)."""
    n_pos = tiny_batch.labels.sum(1)
    floor = n_pos[n_pos > 0].log().mean().item() if slug in ("dlcm", "setrank") else 0.0
    model = build(slug, tiny_spec, hidden=32, dropout=0.0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):  # DLCM's φ is a product of two small factors at init: a slow start
        optimiser.zero_grad()
        loss = model.loss(tiny_batch)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] - floor < 0.8 * (losses[0] - floor)


def test_registration_and_settings(tiny_spec):
    entries = registry.available()
    assert entries["midnn"].family == "sequential"  # the paper's "traditional recommenders" (Table 1)
    assert all(entries[s].family == "list-refinement" for s in ("dlcm", "setrank", "mir"))
    assert all(entries[s].groups == ("baselines",) for s in SLUGS)
    assert set(SLUGS) <= set(registry.resolve(["baselines"]))
    assert all(entries[s].hyperparameters()["hidden"] == 128 and "dropout" in entries[s].hyperparameters()
               for s in SLUGS)
    for slug, bad in [("dlcm", {"feed": "sideways"}), ("setrank", {"block": "isab"}),
                      ("setrank", {"block": "imsab", "n_inducing": 0}), ("midnn", {"layers": "512-x"}),
                      ("mir", {"layers": ""})]:
        with pytest.raises(ConfigError):
            registry.build(slug, tiny_spec, **bad)


def test_logged_slate_is_the_exposed_items_positives_first(tiny_batch):
    from baselines.blocks import logged_slate

    cols, labels = logged_slate(tiny_batch, 6)
    assert cols.shape == (len(tiny_batch), 6)
    assert tiny_batch.exposed.gather(1, cols).all()  # exactly the six exposed candidates
    assert torch.equal(labels, tiny_batch.labels.gather(1, cols))
    assert (labels[:, :-1] >= labels[:, 1:]).all()  # positives first
    for row, lab in zip(cols, labels):  # inside each label group, initial (retriever) order
        for value in (0.0, 1.0):
            group = row[lab == value]
            assert torch.equal(group, group.sort().values)
    plain, _ = logged_slate(tiny_batch, 6, positives_first=False)
    assert (plain[:, :-1] < plain[:, 1:]).all()
