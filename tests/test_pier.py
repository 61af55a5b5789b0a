"""PIER: the permutation generator, FPSM's SimHash selection, OCPM's choice among permutations,
the score-and-sort reduction, the score variants and DNR on the PIER backbone."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.pier import PIER, plackett_luce_permutations
from baselines.score_inputs import ScoreInput
from benchmark.errors import ConfigError
from helpers import build, scores


def top(score_matrix, k=6):
    return torch.argsort(score_matrix, dim=1, descending=True, stable=True)[:, :k]


def test_permutation_generator_greedy_first_distinct_in_pool_never_padded():
    torch.manual_seed(0)
    logits = torch.randn(5, 20)
    mask = torch.ones(5, 20, dtype=torch.bool)
    mask[0, :3] = False  # the three best-looking columns of row 0 are padding
    logits[0, :3] = 10.0
    gen = torch.Generator().manual_seed(1)
    perms = plackett_luce_permutations(logits, mask, n=16, pool=8, k=6, generator=gen)
    assert perms.shape == (5, 16, 6)
    masked = logits.masked_fill(~mask, -torch.inf)
    assert torch.equal(perms[:, 0], torch.topk(masked, 6, dim=1).indices)
    pool = torch.topk(masked, 8, dim=1).indices
    for b in range(5):
        for p in perms[b]:
            assert len(set(p.tolist())) == 6 and set(p.tolist()) <= set(pool[b].tolist())
    assert not (perms[0] < 3).any()
    assert len({tuple(p.tolist()) for p in perms[1]}) > 1  # the samples differ
    again = plackett_luce_permutations(logits, mask, n=16, pool=8, k=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(perms, again)


def test_history_permutations_are_newest_first_chunks(tiny_spec, tiny_batch):
    model = build("pier", tiny_spec)
    items, clicks, real = model.history_permutations(tiny_batch)
    h = tiny_batch.hist_items.shape[1]
    assert items.shape[1:] == (h // 6, 6)
    row = int(torch.argmax(tiny_batch.hist_len))
    n = int(tiny_batch.hist_len[row])
    assert torch.equal(items[row, 0], tiny_batch.hist_items[row, -6:])  # newest chunk, oldest item first
    assert torch.equal(items[row, 1], tiny_batch.hist_items[row, -12:-6])
    assert torch.equal(clicks[row, 0], tiny_batch.hist_labels[row, -6:])
    assert int(real[row].sum()) == min(n // 6, h // 6)


def test_fpsm_codes_prefer_the_users_past_permutation(tiny_spec, tiny_batch):
    """A permutation equal to the user's only (all-clicked) history chunk agrees on every hash bit."""
    model = build("pier", tiny_spec)
    b = dataclasses.replace(tiny_batch)
    hist = torch.zeros_like(b.hist_items)
    hist[:, -6:] = b.items[:, :6]  # the history is exactly the first six candidates, all clicked
    labels = torch.zeros_like(b.hist_labels)
    labels[:, -6:] = 1
    b = dataclasses.replace(b, hist_items=hist, hist_labels=labels, hist_len=torch.full_like(b.hist_len, 6))
    same = torch.arange(6).expand(len(b), 1, 6)
    other = torch.arange(10, 16).expand(len(b), 1, 6)
    with torch.no_grad():
        sim = model.fpsm_similarity(b, torch.cat([same, other], dim=1), hard=True)
        relaxed = model.fpsm_similarity(b, torch.cat([same, other], dim=1), hard=False)
    assert torch.allclose(sim[:, 0], torch.ones(len(b)))
    assert (sim[:, 1] < 1).all() and (sim.abs() <= 1).all()
    assert not torch.equal(relaxed, sim)  # training uses the tanh relaxation


def test_ocpm_is_order_aware(tiny_spec, tiny_batch):
    model = build("pier", tiny_spec)
    with torch.no_grad():
        h = model.encode(tiny_batch)
        perm = torch.arange(6).expand(len(tiny_batch), 1, 6)
        swapped = perm[..., [1, 0, 2, 3, 4, 5]]
        a = model.ocpm_logits(tiny_batch, h, perm)[:, 0]
        b = model.ocpm_logits(tiny_batch, h, swapped)[:, 0]
    assert not torch.allclose(a[:, 0], b[:, 1])  # item 0 at slot 0 vs at slot 1


def test_the_evaluator_chooses_among_the_kept_permutations(tiny_spec, tiny_batch, monkeypatch):
    model = build("pier", tiny_spec, permutations=8, keep=4)
    seen = {}
    real_value = PIER.permutation_value

    def prefer_last(logits):
        seen["n"] = logits.shape[1]
        value = real_value(logits)
        value[:, -1] += 100.0  # OCPM "prefers" the last kept permutation
        return value

    real_ocpm = model.ocpm_logits

    def record(batch, states, perms, history=None):
        seen["perms"] = perms
        return real_ocpm(batch, states, perms, history)

    monkeypatch.setattr(model, "permutation_value", prefer_last)
    monkeypatch.setattr(model, "ocpm_logits", record)
    shown = top(scores(model, tiny_batch))
    assert seen["n"] == 4  # FPSM kept 4 of the 8 generated permutations
    assert torch.equal(shown, seen["perms"][:, -1])
    # and FPSM's choice matters: with keep=1 the displayed list is the most similar permutation
    single = build("pier", tiny_spec, permutations=8, keep=1)
    with torch.no_grad():
        h = single.encode(tiny_batch)
        logits = single.head(h)
        perms = plackett_luce_permutations(logits, tiny_batch.mask, 8, single.pool, 6, single._generator(tiny_batch))
        best = single.fpsm_similarity(tiny_batch, perms, hard=True).argmax(1)
    assert torch.equal(top(scores(single, tiny_batch)), perms[torch.arange(len(tiny_batch)), best])
    assert model.rank_derived_auc and single.rank_derived_auc


def test_lite_is_score_and_sort_and_trains_only_the_candidate_bce(tiny_spec, tiny_batch):
    lite, full = build("pier-lite", tiny_spec), build("pier", tiny_spec)
    assert not lite.rank_derived_auc
    with torch.no_grad():
        logits = lite.head(lite.encode(tiny_batch))
    assert torch.equal(scores(lite, tiny_batch), logits)
    assert torch.is_tensor(lite.loss(tiny_batch))
    parts = full.loss(tiny_batch)
    assert set(parts) == {"bce", "ocpm", "fpsm"} and all(torch.isfinite(v) for v in parts.values())
    parts["ocpm"].backward()
    assert full.omni.layers[0].linear1.weight.grad is not None  # OCPM trains end to end
    assert full.out.weight.grad is None  # ...and its loss does not reach the candidate head


def test_ocpm_trains_on_the_permutations_it_judges(tiny_spec, tiny_batch, monkeypatch):
    """By default OCPM's training permutations are the generated ones (greedy first, then the
    Plackett–Luce samples, as at inference) and FPSM ranks all of them; ``ocpm_logged=True`` puts
    the logged list in the greedy one's place and FPSM ranks only the generated rest."""
    from baselines.blocks import logged_slate
    for logged in (False, True):
        model = build("pier", tiny_spec, ocpm_logged=logged, train_permutations=5)
        seen = {}
        real_ocpm, real_fpsm = model.ocpm_logits, model.fpsm_similarity

        def ocpm(batch, states, perms, history=None, real=real_ocpm):
            seen["ocpm"] = perms
            return real(batch, states, perms, history)

        def fpsm(batch, perms, hard, real=real_fpsm):
            seen["fpsm"] = perms
            return real(batch, perms, hard)

        monkeypatch.setattr(model, "ocpm_logits", ocpm)
        monkeypatch.setattr(model, "fpsm_similarity", fpsm)
        with torch.no_grad():
            logits = model.head(model.encode(tiny_batch))
        torch.manual_seed(3)
        model.loss(tiny_batch)
        torch.manual_seed(3)
        generated = plackett_luce_permutations(logits, tiny_batch.mask, 5, model.pool, 6)
        assert seen["ocpm"].shape[1] == 5
        assert torch.equal(seen["ocpm"][:, 1:], generated[:, 1:])
        first = logged_slate(tiny_batch, 6, positives_first=False)[0] if logged else generated[:, 0]
        assert torch.equal(seen["ocpm"][:, 0], first)
        assert torch.equal(seen["fpsm"], seen["ocpm"][:, 1:] if logged else seen["ocpm"])
    assert not torch.equal(logged_slate(tiny_batch, 6, positives_first=False)[0], generated[:, 0])


def test_score_variants_reuse_the_prm_score_input(tiny_spec, tiny_batch):
    for slug, mode in (("pier-c-score", "concat"), ("pier-plus-score", "plus"), ("pier-w-score", "weight")):
        model = build(slug, tiny_spec)
        assert isinstance(model.score_input, ScoreInput) and model.score_input.mode == mode
        assert model.uses_retriever_score
        moved = dataclasses.replace(tiny_batch, scores=tiny_batch.scores.flip(1))
        assert not torch.equal(scores(model, tiny_batch), scores(model, moved))
    plain = build("pier", tiny_spec)
    moved = dataclasses.replace(tiny_batch, scores=torch.rand_like(tiny_batch.scores))
    assert torch.equal(scores(plain, tiny_batch), scores(plain, moved))


def test_dnr_on_the_pier_backbone(tiny_spec, tiny_batch, monkeypatch):
    model = build("dnr-pier", tiny_spec)
    assert isinstance(model.backbone, PIER) and model.rank_derived_auc
    model.train()
    model.epoch_begin(1)
    parts = model.loss(tiny_batch)
    assert {"direct", "augmented", "ocpm", "fpsm"} <= set(parts)
    calls = []
    real = model.backbone.select
    monkeypatch.setattr(model.backbone, "select", lambda *a: calls.append(1) or real(*a))
    model.eval()
    s = scores(model, tiny_batch)
    assert calls and torch.isfinite(s).all()
    assert build("dnr-pier-g", tiny_spec).heuristic.kind == "gaussian"


@pytest.mark.parametrize("bad", [{"search": "beam"}, {"keep": 40}, {"pool": 3}, {"time_decay": 0.0},
                                 {"hash_bits": 0}, {"fpsm_tau": 0.0}])
def test_bad_settings_are_config_errors(tiny_spec, bad):
    with pytest.raises(ConfigError):
        build("pier", tiny_spec, **bad)


def fpsm_losses(tiny_spec, tiny_batch, teacher, steps=60):
    """FPSM's loss over ``steps`` Adam steps on its own parameters, with the permutations and the
    rest of the model held fixed (same seed for every draw, dropout off)."""
    torch.manual_seed(0)
    model = build("pier", tiny_spec, fpsm_teacher=teacher, fpsm_weight=1.0)
    model.eval()
    params = [*model.fpsm_item.parameters(), model.fpsm_slot, *model.hyperplanes.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)  # the suite's learning rate
    out = []
    for _ in range(steps):
        torch.manual_seed(1)
        loss = model.loss(tiny_batch)["fpsm"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def test_fpsm_learns_to_rank_the_permutation_ocpm_prefers_first(tiny_spec, tiny_batch):
    """With OCPM's preferred permutation as the positive, FPSM's hashing learns (its loss falls from
    about ln 8 for 8 training permutations); a soft target from the near-equal OCPM values barely
    moves it, which is why "best" is the default."""
    best = fpsm_losses(tiny_spec, tiny_batch, "best")
    assert best[0] == pytest.approx(torch.log(torch.tensor(8.0)).item(), abs=0.1)
    assert best[-1] < 0.5 * best[0]
    soft = fpsm_losses(tiny_spec, tiny_batch, "soft")
    assert soft[-1] > 0.97 * soft[0]
    with pytest.raises(ConfigError):
        build("pier", tiny_spec, fpsm_teacher="hard")
