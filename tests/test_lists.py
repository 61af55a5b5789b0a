"""Candidate lists on a real ml-100k subset: invariants, cross-fitting, leakage guard, cache."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from benchmark import metrics
from benchmark.config import load_data_config
from benchmark.data import candidates
from benchmark.data import protocol, retriever, sources
from benchmark.data.lists import build_candidate_lists
from benchmark.data.protocol import TEST, TRAIN
from conftest import SMALL


def build(cache_dir, data_dir=None, **extra):
    return build_candidate_lists("ml-100k", data_dir=data_dir, cache_dir=cache_dir, overrides={**SMALL, **extra},
                                 download=False, progress=False, n_jobs=1)


@pytest.fixture(scope="module")
def small_lists(tmp_path_factory):
    out = {}
    for fill in ("topk", "random", "score_matched"):
        out[fill], _ = build(tmp_path_factory.mktemp(fill), fill=fill)
    return out


def user_prefix_items(data: protocol.Interactions, user: int, end: int) -> set[int]:
    return set(data.item[data.user_ptr[user]:end].tolist())


@pytest.mark.parametrize("fill", ["topk", "random", "score_matched"])
def test_candidate_invariants(small_lists, fill):
    cl = small_lists[fill]
    items, scores, labels, exposed = cl.items, cl.scores, cl.labels, cl.exposed
    assert items.shape == (len(cl), 50) and cl.meta["candidates_per_request"] == 50
    assert all(len(set(row)) == 50 for row in items)  # 50 distinct items
    assert (items >= 1).all() and (items <= cl.n_items).all()
    assert (exposed.sum(1) == 6).all()
    assert (labels[~exposed] == 0).all()  # fillers are label 0
    assert ((scores > 0) & (scores < 1)).all()
    assert (np.diff(scores.astype(np.float64), axis=1) <= 0).all()  # retriever order
    # never "exposed first": exposed items sit at many different positions
    positions = np.nonzero(exposed)[1]
    assert len(np.unique(positions)) > 20 and not (exposed[:, :6].all())
    # fillers are never in the user's history (nor the window): history items appear only as exposed
    for r in range(len(cl)):
        hist = set(cl.hist_items[r][cl.hist_items[r] > 0].tolist())
        assert not hist & set(items[r][~exposed[r]].tolist())
    # val/test lists keep only requests with a positive
    evaluated = cl.split != TRAIN
    assert (labels[evaluated].sum(1) >= 1).all()


def test_fillers_exclude_full_history(tmp_path):
    """Full history, not only the last 50: rebuild the pieces and check against the raw log."""
    cfg = load_data_config("ml-100k", SMALL)
    files = sources.resolve_files("ml-100k", None, tmp_path, download=False)
    frame, _ = sources.load_interactions(files)
    frame = protocol.subsample_users(protocol.deduplicate(frame), cfg.max_users, cfg.data_seed)
    frame = frame[protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), cfg.k_core)]
    data = protocol.to_interactions(frame)
    req = protocol.make_requests(data, 6, cfg.n_folds, cfg.data_seed)
    rows = protocol.retriever_rows(data, req, 6, cfg.mf_holdout)
    models, _ = retriever.fit_cross_fitted(data, rows, cfg, n_jobs=1, progress=False)
    arrays = candidates.build_candidates(data, req, models, cfg, progress=False)
    for r in range(0, len(req), 7):
        before = user_prefix_items(data, req.user[r], req.start[r] + 6)
        fillers = set(arrays["items"][r][~arrays["exposed"][r]].tolist())
        assert not before & fillers

    # cross-fitting: a fold-k train request is scored by model k, val/test by the full model
    for r in [np.flatnonzero(req.fold == k)[0] for k in range(cfg.n_folds)] + [np.flatnonzero(req.split == TEST)[0]]:
        model = models.model_for(int(req.fold[r]))
        with torch.no_grad():
            logits = model.all_items(torch.tensor([int(req.user[r])]))[0, arrays["items"][r]].numpy()
        np.testing.assert_allclose(arrays["scores"][r], 1 / (1 + np.exp(-logits)), rtol=1e-5)
        other = models.model_for(-1 if req.fold[r] >= 0 else 0)
        with torch.no_grad():
            other_logits = other.all_items(torch.tensor([int(req.user[r])]))[0, arrays["items"][r]].numpy()
        assert not np.allclose(logits, other_logits)

    # each fold model is trained without the rows of its own fold's windows, never on val/test rows
    eval_rows = protocol.gather_rows(req.start[req.split != TRAIN], np.arange(6)).ravel()
    for task in retriever.cross_fit_tasks(rows, cfg.n_folds):
        assert not task.train[eval_rows].any() and not task.holdout[eval_rows].any()
        if task.seed < cfg.n_folds:
            fold_rows = protocol.gather_rows(req.start[req.fold == task.seed], np.arange(6)).ravel()
            assert not task.train[fold_rows].any() and not task.holdout[fold_rows].any()


def test_position_scorer_cannot_beat_retriever_order(small_lists):
    """Protocol §6.3: a model that scores by input position gets exactly the retriever order."""
    test = small_lists["topk"].split("test")
    position_scores = -np.arange(50, dtype=float)[None, :].repeat(len(test["items"]), 0)
    by_position = metrics.mean_metrics(metrics.per_request_metrics(position_scores, test["labels"]))
    retriever_order = small_lists["topk"].meta["retriever_order"]
    for key in ("H@6", "N@6", "M@6", "F1@6"):
        assert by_position[key] == pytest.approx(retriever_order[key])
    oracle_h = np.mean(np.minimum(test["labels"].sum(1), 6)) / 6
    assert by_position["H@6"] < 0.5 * oracle_h


def test_diagnostics_present_and_consistent(small_lists):
    for fill, cl in small_lists.items():
        diag = cl.meta["diagnostics"]
        assert set(diag["exposed_vs_filler_auc"]) == {"train", "val", "test"}
        test = cl.split("test")
        recomputed = metrics.per_request_metrics(test["scores"], test["exposed"].astype(np.int8))["AUC"]
        assert diag["exposed_vs_filler_auc"]["test"] == pytest.approx(np.nanmean(recomputed))
        assert diag["informative"] == (diag["positive_vs_rest_auc"]["test"] > 0.5)
        assert 0 < cl.meta["retriever_auc"] < 1 and len(cl.meta["retriever"]["fold_auc"]) == 5
        assert cl.meta["mean_positives_per_request"]["test"] <= 6
    # top-k fillers are by construction the highest-scored items: exposed items beat them less
    # often than they beat random fillers, whatever the model
    auc = {fill: cl.meta["diagnostics"]["exposed_vs_filler_auc"]["test"] for fill, cl in small_lists.items()}
    assert auc["topk"] < auc["random"]


def test_same_seed_same_lists_and_new_seed_differs(tmp_path, small_lists):
    again, cached = build(tmp_path / "a")
    assert not cached
    for key, value in small_lists["topk"].arrays.items():
        np.testing.assert_array_equal(value, again.arrays[key], err_msg=key)
    other, _ = build(tmp_path / "b", data_seed=1)
    assert not np.array_equal(other.items, again.items)


def test_cache_hit_and_rebuild(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sources._recbole_ml100k(), data_dir / "ml-100k.inter")
    cache = tmp_path / "cache"
    first, cached = build(cache, data_dir)
    assert not cached and not first.meta.get("load_seconds")
    second, cached = build(cache, data_dir)
    assert cached and second.meta["cache_key"] == first.meta["cache_key"]
    np.testing.assert_array_equal(first.items, second.items)
    # things that do not define the lists do not rebuild
    _, cached = build_candidate_lists("ml-100k", data_dir=data_dir, cache_dir=cache, overrides=SMALL,
                                      download=False, progress=False, n_jobs=2)
    assert cached
    # a protocol setting rebuilds
    _, cached = build(cache, data_dir, fill="random")
    assert not cached
    # a changed input file rebuilds
    path = data_dir / "ml-100k.inter"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("\t3\t", "\t1\t", 1)
    path.write_text("\n".join(lines) + "\n")
    third, cached = build(cache, data_dir)
    assert not cached and third.meta["cache_key"] != first.meta["cache_key"]
    assert len(list((cache / "lists").iterdir())) == 3


def test_fill_change_reuses_retriever_fits(tmp_path):
    first, _ = build(tmp_path)
    assert first.meta["retriever"]["reused_cached_fits"] is False
    other, cached = build(tmp_path, fill="score_matched")
    assert not cached and other.meta["retriever"]["reused_cached_fits"] is True
    assert other.meta["retriever_auc"] == first.meta["retriever_auc"]
    # same models: the exposed items of every request get the same scores under both fills
    np.testing.assert_array_equal(np.sort(first.scores[first.exposed].reshape(-1, 6), 1),
                                  np.sort(other.scores[other.exposed].reshape(-1, 6), 1))
