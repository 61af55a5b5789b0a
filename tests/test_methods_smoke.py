"""Every registered method: construct, one short epoch on real lists, a valid top-6, finite
losses, same seed -> identical metrics, state-dict round trip. A new method is "done" when it
passes here."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from benchmark import registry
from benchmark.batches import SplitTensors
from benchmark.config import TrainConfig
from benchmark.trainer import fit, seed_everything
from helpers import scores

SLUGS = sorted(registry.available())
CFG = TrainConfig(batch_size=128, max_epochs=2, patience=1, max_train_requests=256)
FAST = {"switch_epoch": 1}  # DNR: the learned generator runs in epoch 2


@pytest.fixture(scope="module")
def splits(tiny_lists):
    return {"train": SplitTensors.of(tiny_lists, "train", limit=256), "val": SplitTensors.of(tiny_lists, "val"),
            "test": SplitTensors.of(tiny_lists, "test")}


def build(slug, spec, seed=0):
    seed_everything(seed)
    entry = registry.get(slug)
    extra = {k: v for k, v in FAST.items() if k in registry.accepted_hparams(entry.cls)}
    return registry.build(slug, spec, **extra)


def train(slug, spec, splits, seed=0):
    model = build(slug, spec, seed)
    return model, fit(model, splits["train"], splits["val"], splits["test"], CFG, seed=seed, k=6)


def test_registry_is_not_empty_and_groups_resolve():
    assert {"retriever", "random", "prm", "prm-c-score", "prm-plus-score", "prm-w-score", "dnr-g", "dnr-b",
            "dnr-bl"} <= set(SLUGS)
    assert set(registry.resolve(["dnr"])) >= {"dnr-g", "dnr-b", "dnr-bl"}
    assert "prm" in registry.resolve(["baselines"])


def test_a_slug_names_one_method_and_no_group_shares_a_name():
    """`--methods dnr-pier` once ran dnr-pier-g too: the group was called dnr-pier as well."""
    assert not set(registry.group_names()) & set(SLUGS)
    for slug in SLUGS:
        assert registry.resolve([slug]) == [slug]
    assert registry.resolve(["dnr-on-pier"]) == ["dnr-pier", "dnr-pier-g"]
    saved = dict(registry._REGISTRY)
    try:
        with pytest.raises(ValueError, match="both a method and a group"):
            registry.register_variant("dnr-pier-x", base="dnr-pier", groups=("prm",))
        with pytest.raises(ValueError, match="both a method and a group"):
            registry.register_variant("dnr-ablations", base="dnr-b")
        with pytest.raises(ValueError, match="both a method and a group"):
            registry.register_variant("dnr-b-x", base="dnr-b", groups=("all",))  # `all` is every method
        with pytest.raises(ValueError, match="registered twice"):
            registry.register_variant("prm", base="prm")
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
    assert registry.available() == saved


@pytest.mark.parametrize("slug", SLUGS)
def test_method_smoke(slug, tiny_spec, splits, tiny_batch):
    model, result = train(slug, tiny_spec, splits)
    # a valid top-6 out of the 50 candidates
    model.eval()
    with torch.no_grad():
        top = model.rerank(tiny_batch, 6)
        values = model.score(tiny_batch)
    assert top.shape == (len(tiny_batch), 6)
    assert ((top >= 0) & (top < 50)).all()
    assert all(len(set(row.tolist())) == 6 for row in top)
    assert values.shape == (len(tiny_batch), 50) and torch.isfinite(values).all()
    # finite losses, every step that ran
    for entry in result.history:
        for parts in entry["train_loss"].values():
            assert all(np.isfinite(v) for v in parts.values())
    if model.trainable:
        assert result.history and result.epochs_run >= 1
    assert all(np.isfinite(v) for k, v in result.test.items() if k not in ("Recall@6",))
    # same seed -> identical metrics
    _, again = train(slug, tiny_spec, splits)
    assert again.test == result.test
    # state dict round trip into a fresh instance
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(slug, tiny_spec, seed=99)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    assert torch.equal(scores(model, tiny_batch, seed=0), scores(fresh, tiny_batch, seed=0))


@pytest.mark.parametrize("slug", SLUGS)
def test_scores_never_read_labels_or_exposure(slug, tiny_spec, tiny_batch):
    """Labels and the exposed flag are training signals: every positive is exposed, so a method
    whose ``score`` read either would see the answer (api.Batch)."""
    import dataclasses

    model = build(slug, tiny_spec).eval()
    flipped = dataclasses.replace(tiny_batch, labels=1.0 - tiny_batch.labels, exposed=~tiny_batch.exposed)
    assert torch.equal(scores(model, tiny_batch, seed=0), scores(model, flipped, seed=0))


def test_order_scores_reproduce_the_order_and_keep_the_rest():
    from benchmark.api import order_scores

    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 6:] = False
    order = torch.tensor([[5, 1, 2], [0, 4, 3]])
    rest = torch.tensor([[0.0, 9, 1, 2, 3, 8, 7, 6], [5, 4, 3, 2, 1, 0, 9, 9]])
    out = order_scores(order, mask, rest)
    assert torch.equal(torch.argsort(out, dim=1, descending=True, stable=True)[:, :3], order)
    assert torch.isneginf(out[1, 6:]).all() and torch.isfinite(out[0]).all()
    # the unchosen keep the order of ``rest``: 6 (7), 7 (6), 4 (3), 3 (2), 0 (0)
    ranked = torch.argsort(out[0], descending=True, stable=True)[3:].tolist()
    assert ranked == [6, 7, 4, 3, 0]
    plain = order_scores(order, mask)  # no rest: ties, so the stable sort keeps the retriever order
    assert torch.argsort(plain[0], descending=True, stable=True)[3:].tolist() == [0, 3, 4, 6, 7]
