"""PRM, its score-input variants, the shared blocks and the reference rows on real ml-100k lists."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.blocks import ListEncoder
from baselines.score_inputs import list_standardise
from benchmark import registry
from benchmark.errors import ConfigError

PRM_SLUGS = ("prm", "prm-c-score", "prm-plus-score", "prm-w-score", "prm-large")
SCORE_VARIANTS = ("prm-c-score", "prm-plus-score", "prm-w-score")
SLUGS = (*PRM_SLUGS, "retriever", "random")


def build(slug, spec, **hparams):
    torch.manual_seed(0)
    return registry.build(slug, spec, **hparams).eval()


def permute_columns(batch, perm):
    return dataclasses.replace(batch, **{f: getattr(batch, f)[:, perm] for f in ("items", "scores", "labels", "mask")})


@pytest.mark.parametrize("slug", PRM_SLUGS)
def test_prm_scores_every_candidate(tiny_spec, tiny_batch, slug):
    with torch.no_grad():
        out = build(slug, tiny_spec).score(tiny_batch)
    assert out.shape == (64, 50) and torch.isfinite(out).all()


def test_prm_is_deterministic_given_the_seed(tiny_spec, tiny_batch):
    with torch.no_grad():
        assert torch.equal(build("prm", tiny_spec).score(tiny_batch), build("prm", tiny_spec).score(tiny_batch))


def test_plain_prm_never_reads_the_retriever_score(tiny_spec, tiny_batch):
    model = build("prm", tiny_spec)
    assert not model.uses_retriever_score
    nan_scores = dataclasses.replace(tiny_batch, scores=torch.full_like(tiny_batch.scores, torch.nan))
    with torch.no_grad():
        assert torch.equal(model.score(nan_scores), model.score(tiny_batch))


@pytest.mark.parametrize("slug", SCORE_VARIANTS)
def test_score_variants_read_the_retriever_score(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    assert model.uses_retriever_score
    reversed_scores = dataclasses.replace(tiny_batch, scores=tiny_batch.scores.flip(1))
    with torch.no_grad():
        assert not torch.allclose(model.score(reversed_scores), model.score(tiny_batch), atol=1e-5)


def test_late_score_enters_only_the_head(tiny_spec, tiny_batch):
    model = build("prm", tiny_spec, late_score=True)
    assert model.uses_retriever_score
    x, other = tiny_batch.scores, torch.rand_like(tiny_batch.scores)
    with torch.no_grad():
        h = model.encode(tiny_batch)
        assert torch.equal(h, model.encode(tiny_batch, other))
        # v starts at zero: no effect until trained
        assert torch.equal(model.head(h, x), model.head(h, other))
    loss = model.head(h, x).sum()
    loss.backward()
    assert model.late_weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.late_weight.normal_()
        shift = model.head(h, other) - model.head(h, x)
        assert torch.allclose(shift, (other - x) * (model.out.weight[0] @ model.late_weight), atol=1e-4)
    with pytest.raises(ValueError):
        model.head(h)


def test_initial_position_matters(tiny_spec, tiny_batch):
    model = build("prm", tiny_spec)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        permuted = model.score(permute_columns(tiny_batch, perm))
        assert not torch.allclose(permuted, model.score(tiny_batch)[:, perm], atol=1e-4)


def test_causal_prm_reads_only_earlier_candidates(tiny_spec, tiny_batch):
    model = build("prm", tiny_spec, causal=True)
    later_changed = dataclasses.replace(tiny_batch, items=torch.cat([tiny_batch.items[:, :30],
                                                                     tiny_batch.items[:, :20]], 1))
    with torch.no_grad():
        out, out_changed = model.score(tiny_batch), model.score(later_changed)
    assert torch.allclose(out[:, :30], out_changed[:, :30], atol=1e-5)
    assert not torch.allclose(out[:, 30:], out_changed[:, 30:], atol=1e-5)


@pytest.mark.parametrize("positional, equivariant", [(False, True), (True, False)])
def test_list_encoder_without_positions_is_permutation_equivariant(positional, equivariant):
    torch.manual_seed(0)
    encoder = ListEncoder(12, 16, n_layers=2, n_heads=2, ffn=32, dropout=0.1, positional=positional).eval()
    x, valid = torch.randn(3, 12, 16), torch.ones(3, 12, dtype=torch.bool)
    perm = torch.randperm(12)
    with torch.no_grad():
        same = torch.allclose(encoder(x[:, perm], valid), encoder(x, valid)[:, perm], atol=1e-5)
    assert same == equivariant


def test_padded_candidates_are_ignored(tiny_spec, tiny_batch):
    model = build("prm-w-score", tiny_spec)
    mask = tiny_batch.mask.clone()
    mask[:, 40:] = False
    padded = dataclasses.replace(tiny_batch, mask=mask)
    changed = dataclasses.replace(padded, items=torch.cat([tiny_batch.items[:, :40], tiny_batch.items[:, :10]], 1),
                                  scores=torch.cat([tiny_batch.scores[:, :40], torch.ones(64, 10)], 1))
    with torch.no_grad():
        out, out_changed = model.score(padded), model.score(changed)
    assert torch.isneginf(out[:, 40:]).all() and torch.isfinite(out[:, :40]).all()
    assert torch.allclose(out[:, :40], out_changed[:, :40], atol=1e-5)
    assert torch.isfinite(model.loss(padded))


def test_empty_histories_give_finite_states_and_gradients(tiny_spec, tiny_batch):
    empty = dataclasses.replace(tiny_batch, hist_items=torch.zeros_like(tiny_batch.hist_items),
                                hist_labels=torch.zeros_like(tiny_batch.hist_labels),
                                hist_len=torch.zeros_like(tiny_batch.hist_len))
    model = build("prm", tiny_spec).train()
    user, _ = model.context(empty)
    assert user.shape == (64, 128) and torch.isfinite(user).all()
    model.loss(empty).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    mixed = dataclasses.replace(tiny_batch, hist_len=tiny_batch.hist_len * (torch.arange(64) % 2))
    with torch.no_grad():
        assert torch.isfinite(model.eval().score(mixed)).all()


def test_adam_steps_reduce_the_bce_loss(tiny_spec, tiny_batch):
    model = build("prm", tiny_spec, hidden=32, ffn=32, dropout=0.0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        loss = model.loss(tiny_batch)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_list_standardise_uses_real_candidates_only():
    x = torch.tensor([[0.50, 0.52, 0.54, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    z = list_standardise(x, mask)
    assert torch.allclose(z[0, :3], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-3) and z[0, 3] == 0


def test_unknown_score_input_is_a_config_error(tiny_spec):
    with pytest.raises(ConfigError):
        registry.build("prm", tiny_spec, score_input="sum")


def test_retriever_row_is_the_retriever_order(tiny_spec, tiny_batch):
    model = registry.build("retriever", tiny_spec)
    assert not model.trainable and model.uses_retriever_score and not list(model.parameters())
    assert torch.equal(model.score(tiny_batch), tiny_batch.scores)
    assert torch.equal(model.rerank(tiny_batch, 6), torch.argsort(tiny_batch.scores, dim=1, descending=True, stable=True)[:, :6])
    with pytest.raises(TypeError, match="no loss"):
        model.loss(tiny_batch)


def test_random_row_is_seeded_and_independent_of_batching(tiny_spec, tiny_batch):
    first, again, other = (registry.build("random", tiny_spec, seed=s) for s in (0, 0, 1))
    out = first.score(tiny_batch)
    assert not first.trainable and not first.uses_retriever_score
    assert ((out > 0) & (out < 1)).all() and (out.sort(dim=1).values.diff(dim=1) > 0).all()
    assert torch.equal(out, again.score(tiny_batch)) and not torch.allclose(out, other.score(tiny_batch))
    half = dataclasses.replace(tiny_batch, **{f.name: getattr(tiny_batch, f.name)[32:]
                                              for f in dataclasses.fields(tiny_batch)})
    assert torch.equal(first.score(half), out[32:])
    # every initial position is about equally likely to be shown first
    n = 20_000
    many = dataclasses.replace(tiny_batch, request_id=torch.arange(n), items=tiny_batch.items[:1].expand(n, -1),
                               mask=tiny_batch.mask[:1].expand(n, -1))
    shown_first = torch.bincount(first.score(many).argmax(1), minlength=50).float()
    assert (shown_first / (n / 50) - 1).abs().max() < 0.3


def test_every_slug_is_registered_and_builds(tiny_spec):
    entries = registry.available()
    assert set(SLUGS) <= set(entries)
    assert entries["prm"].groups == ("baselines",) and entries["prm-large"].groups == ("large",)
    assert all(entries[s].groups == ("score-variants",) and entries[s].family == "list-refinement" for s in SCORE_VARIANTS)
    assert entries["prm-large"].hyperparameters()["n_layers"] == 6
    assert registry.resolve(["reference"]) == ["retriever", "random"]
    for slug in SLUGS:
        assert isinstance(registry.build(slug, tiny_spec), entries[slug].cls)


def test_random_row_follows_the_run_seed(tiny_spec, tiny_batch):
    def scores(run_seed):
        torch.manual_seed(run_seed)
        return registry.build("random", tiny_spec).score(tiny_batch)

    assert torch.equal(scores(5), scores(5)) and not torch.equal(scores(5), scores(6))
