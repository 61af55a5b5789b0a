"""NAR4Rec (methods.md §4.3): one non-autoregressive pass for all 6 positions, P as distributions
over the real candidates, contrastive decoding, the (un)likelihood loss by hand, the two label
modes, the contrastive loss, and bad settings."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.nar4rec import contrastive_decode, generation_loss, margin_contrastive_loss
from benchmark.errors import ConfigError
from helpers import build, scores


def padded(batch, n_real):
    """``batch`` with only the first ``n_real[b]`` candidates of row b real (item 0 elsewhere)."""
    width = batch.items.shape[1]
    mask = torch.arange(width)[None, :] < torch.as_tensor(n_real)[:, None]
    return dataclasses.replace(batch, mask=mask, items=batch.items.masked_fill(~mask, 0),
                               labels=batch.labels.masked_fill(~mask, 0.0), exposed=batch.exposed & mask)


def greedy(probs, mask):
    """Reference: per position, the best unchosen real candidate (a plain Python loop)."""
    out = []
    for p, m in zip(probs.tolist(), mask.tolist()):
        chosen = []
        for row in p:
            best = max((i for i in range(len(row)) if m[i] and i not in chosen), key=lambda i: (row[i], -i))
            chosen.append(best)
        out.append(chosen)
    return torch.tensor(out)


# --- one forward pass for all positions -----------------------------------------------------------

def test_all_positions_come_from_one_encoder_and_decoder_pass(tiny_spec, tiny_batch):
    model = build("nar4rec", tiny_spec)
    calls = {"user": 0, "encoder": 0, "decoder": 0}
    shapes = []

    def counter(name):
        def hook(module, args, output):
            calls[name] += 1
            if name == "decoder":
                shapes.append(tuple(output.shape))
        return hook

    handles = [model.user_encoder.register_forward_hook(counter("user")),
               model.encoder.register_forward_hook(counter("encoder")),
               model.decoder.register_forward_hook(counter("decoder"))]
    try:
        out = scores(model, tiny_batch)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"user": 1, "encoder": 1, "decoder": 1}
    assert shapes == [(len(tiny_batch), 6, 128)]  # the 6 position states at once
    assert out.shape == (len(tiny_batch), 50) and torch.isfinite(out).all()
    assert model.rank_derived_auc and model.family == "generator-evaluator"


# --- P: distributions over the real candidates ----------------------------------------------------

def test_position_distributions_cover_only_real_candidates(tiny_spec, tiny_batch):
    model = build("nar4rec", tiny_spec)
    n_real = torch.full((len(tiny_batch),), 50)
    n_real[:20] = 30
    n_real[20:24] = 4  # fewer real candidates than positions
    batch = padded(tiny_batch, n_real)
    with torch.no_grad():
        probs = model.probabilities(batch)
        order, _ = model.decode(batch)
    assert probs.shape == (len(batch), 6, 50)
    assert torch.allclose(probs.sum(-1), torch.ones(len(batch), 6), atol=1e-5)
    assert (probs.masked_select(~batch.mask[:, None, :].expand_as(probs)) == 0).all()
    assert (probs.masked_select(batch.mask[:, None, :].expand_as(probs)) > 0).all()
    # padded slots never change the real candidates' P (other items there, same result)
    other = dataclasses.replace(batch, items=torch.where(batch.mask, batch.items, 7))
    with torch.no_grad():
        assert torch.allclose(model.probabilities(other), probs, atol=1e-5)
    # the decode uses real candidates first; score is -inf exactly on the padded slots
    assert batch.mask.gather(1, order[:20]).all()
    few = batch.mask[20:24]
    assert few.gather(1, order[20:24, :4]).all() and not few.gather(1, order[20:24, 4:]).any()
    out = scores(model, batch)
    assert torch.equal(torch.isfinite(out), batch.mask)
    assert torch.equal(model.rerank(batch, 6)[:20], order[:20])


# --- contrastive decoding -------------------------------------------------------------------------

def test_contrastive_decode_by_hand():
    probs = torch.tensor([[[0.5, 0.3, 0.15, 0.05], [0.1, 0.5, 0.35, 0.05]]])
    reps = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.6, 0.8]]])  # c_1 ~ c_0
    mask = torch.ones(1, 4, dtype=torch.bool)
    # a = 0: greedy per position; position 2 takes the near-duplicate c_1
    assert contrastive_decode(probs, reps, mask, 0.0).tolist() == [[0, 1]]
    # a = 0.5 at position 2: c_1 0.25 - 0.5 * ~1, c_2 0.175 - 0, c_3 0.025 - 0.5 * 0.6 -> c_2
    assert contrastive_decode(probs, reps, mask, 0.5).tolist() == [[0, 2]]
    # a = 0.1: c_1 0.45 - 0.1 * ~1 = 0.35 beats c_2 0.315: the penalty is weighed, not absolute
    assert contrastive_decode(probs, reps, mask, 0.1).tolist() == [[0, 1]]
    # no penalty at position 1 (all cosines to c_0 would otherwise move the first pick off c_0)
    assert contrastive_decode(probs, reps, mask, 0.9)[0, 0].item() == 0
    # a padded candidate is never picked while a real one is left, whatever its probability
    masked = mask.clone()
    masked[0, 2] = False
    assert contrastive_decode(probs, reps, masked, 0.5).tolist() == [[0, 1]]


def test_weight_zero_is_greedy_on_p(tiny_spec, tiny_batch):
    model = build("nar4rec", tiny_spec, contrastive_weight=0.0)
    batch = padded(tiny_batch, torch.where(torch.arange(len(tiny_batch)) < 10, 40, 50))
    with torch.no_grad():
        order, probs = model.decode(batch)
    assert torch.equal(order, greedy(probs, batch.mask))
    assert torch.equal(model.rerank(batch, 6), order)


def test_large_weight_avoids_a_twin_of_a_chosen_candidate(tiny_spec, tiny_batch):
    """Without position embeddings the candidate encoder is permutation-equivariant, so a
    candidate holding the same item as another has the same c_i (cosine 1) and the same P
    column. Every candidate gets a twin: greedy decoding picks twins, a = 0.9 never does."""
    model = build("nar4rec", tiny_spec)
    with torch.no_grad():
        model.encoder.positions.weight.zero_()
    items = tiny_batch.items.clone()
    items[:, 25:] = items[:, :25]
    batch = dataclasses.replace(tiny_batch, items=items)
    with torch.no_grad():
        log_probs, reps = model.forward_parts(batch)
    assert torch.allclose(reps[:, 25:], reps[:, :25], atol=1e-5)

    def twin_rows(order):
        slot = order % 25
        return sum(len(set(row.tolist())) < 6 for row in slot)

    with torch.no_grad():
        model.contrastive_weight = 0.0
        plain = model.decode(batch)[0]
        model.contrastive_weight = 0.9
        spread = model.decode(batch)[0]
    assert twin_rows(plain) > len(batch) // 2
    assert twin_rows(spread) == 0


# --- losses ---------------------------------------------------------------------------------------

def test_likelihood_and_unlikelihood_by_hand():
    p = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],
                      [[0.2, 0.2, 0.6], [0.7, 0.1, 0.2]]])
    log_probs = p.log()
    columns = torch.tensor([[0, 1], [2, 0]])  # targets: p = 0.5, 0.6 | 0.6, 0.7
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    ln = math.log

    def run(mode, threshold, v=valid):
        out = generation_loss(log_probs, columns, labels, v, mode, threshold)
        return out["likelihood"].item(), out["unlikelihood"].item()

    # sequence, threshold 1: list 0 (one positive) is positive, list 1 negative
    like, unlike = run("sequence", 1)
    assert like == pytest.approx(-(ln(0.5) + ln(0.6)) / 4, abs=1e-6)
    assert unlike == pytest.approx(-(ln(1 - 0.6) + ln(1 - 0.7)) / 4, abs=1e-6)
    # token: only the positive target item gets likelihood
    like, unlike = run("token", 1)
    assert like == pytest.approx(-ln(0.5) / 4, abs=1e-6)
    assert unlike == pytest.approx(-(ln(0.4) + ln(0.4) + ln(0.3)) / 4, abs=1e-6)
    # sequence, threshold 2: both lists negative
    like, unlike = run("sequence", 2)
    assert like == 0.0 and unlike == pytest.approx(-(ln(0.5) + ln(0.4) + ln(0.4) + ln(0.3)) / 4, abs=1e-6)
    # an invalid token (target on a padded slot, log P = -inf) is left out, gradients stay finite
    padded_log = log_probs.clone()
    padded_log[1, :, 0] = -torch.inf
    padded_log.requires_grad_(True)
    v = torch.tensor([[True, True], [True, False]])
    out = generation_loss(padded_log, columns, labels, v, "sequence", 1)
    assert out["unlikelihood"].item() == pytest.approx(-ln(0.4) / 3, abs=1e-6)
    sum(out.values()).backward()
    assert torch.isfinite(padded_log.grad).all()


def test_label_modes_differ_on_mixed_labels(tiny_spec, tiny_batch):
    from baselines.blocks import logged_slate

    _, slate_labels = logged_slate(tiny_batch, 6)
    mixed = (slate_labels.sum(1) > 0) & (slate_labels.sum(1) < 6)
    assert mixed.any()  # the real batch has lists with positive and negative exposed items
    losses = {}
    for mode in ("sequence", "token"):
        model = build("nar4rec", tiny_spec, unlikelihood=mode)  # same seed: same weights
        with torch.no_grad():
            losses[mode] = {k: v.item() for k, v in model.loss(tiny_batch).items()}
    assert losses["sequence"]["likelihood"] > losses["token"]["likelihood"]
    assert losses["token"]["unlikelihood"] > 0
    assert losses["sequence"]["contrastive"] == pytest.approx(losses["token"]["contrastive"])
    # implicit feedback (every exposed item positive): neither mode has an unlikelihood token
    implicit = dataclasses.replace(tiny_batch, labels=tiny_batch.exposed.float())
    for mode in ("sequence", "token"):
        model = build("nar4rec", tiny_spec, unlikelihood=mode)
        with torch.no_grad():
            assert model.loss(implicit)["unlikelihood"].item() == 0.0


def test_margin_contrastive_loss_by_hand(tiny_spec, tiny_batch):
    reps = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    full = torch.ones(1, 3, dtype=torch.bool)
    # cosines: (0, 1) = 1, others 0; hinge max(0, cos - 0.5) over the 6 ordered pairs
    assert margin_contrastive_loss(reps, full, 0.5).item() == pytest.approx(2 * 0.5 / 6)
    assert margin_contrastive_loss(reps, full, 1.5).item() == pytest.approx((2 * 1.5 + 4 * 0.5) / 6)
    assert margin_contrastive_loss(reps, torch.tensor([[True, False, True]]), 0.5).item() == 0.0
    # weighted into the model's loss; weight 0 drops the part
    assert "contrastive" not in build("nar4rec", tiny_spec, contrastive_loss_weight=0.0).loss(tiny_batch)


def test_a_few_steps_lower_the_loss(tiny_spec, tiny_batch):
    model = build("nar4rec", tiny_spec, dropout=0.0).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        total = sum(model.loss(tiny_batch).values())
        first = total.item() if first is None else first
        optim.zero_grad()
        total.backward()
        optim.step()
    assert sum(model.loss(tiny_batch).values()).item() < first


# --- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"unlikelihood": "list"}, {"seq_threshold": -1}, {"seq_threshold": 7},
                                 {"contrastive_weight": -0.1}, {"contrastive_weight": 1.5},
                                 {"contrastive_loss_weight": -1.0}, {"contrastive_margin": 3.0},
                                 {"decoder_layers": 0}, {"n_heads": 3}, {"dropout": 1.0}])
def test_bad_settings_raise(tiny_spec, bad):
    with pytest.raises(ConfigError):
        build("nar4rec", tiny_spec, **bad)
