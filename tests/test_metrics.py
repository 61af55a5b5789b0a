"""Tests for benchmark.metrics (docs/protocol.md §8)."""

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from benchmark.metrics import gauc, global_auc, mean_metrics, per_request_metrics, ranking

K = 6
L = 50
METRIC_KEYS = ["H@6", "N@6", "M@6", "F1@6", "AUC", "Recall@6", "HitRate@6"]


def _random_lists(rng, R=300, n_max=6, ties=False):
    """R lists of L candidates with 0..n_max positives; tie-free scores unless ties=True."""
    labels = np.zeros((R, L), dtype=np.int64)
    n = rng.integers(0, n_max + 1, size=R)
    for r in range(R):  # test data construction only
        labels[r, rng.choice(L, size=n[r], replace=False)] = 1
    scores = rng.integers(0, 4, size=(R, L)).astype(float) if ties else rng.normal(size=(R, L))
    return scores, labels


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---------------------------------------------------------------- known answers

def test_toy_known_answer():
    # retriever order = column order; top-6 labels [1,0,1,1,0,0], 4th positive at position 21
    labels = np.zeros((1, L), dtype=int)
    labels[0, [0, 2, 3, 20]] = 1
    scores = np.arange(L, 0, -1, dtype=float)[None, :]
    m = per_request_metrics(scores, labels, k=K)
    assert m["n_pos"][0] == 4 and m["hits"][0] == 3
    assert m["H@6"][0] == pytest.approx(0.5, abs=1e-12)
    assert m["F1@6"][0] == pytest.approx(0.6, abs=1e-12)
    assert m["M@6"][0] == pytest.approx(0.6042, abs=1e-4)
    assert m["M@6"][0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4, abs=1e-12)
    assert m["N@6"][0] == pytest.approx(0.7537, abs=1e-4)
    assert m["Recall@6"][0] == pytest.approx(0.75)
    assert m["HitRate@6"][0] == 1.0
    # AUC: positives at ranks 1,3,4,21 of 50 -> beaten negatives 49+48+48+30 over 4*46 pairs
    assert m["AUC"][0] == pytest.approx((46 + 45 + 45 + 29) / (4 * 46), abs=1e-12)


def test_auc_with_ties_by_hand():
    scores = np.array([[0.9, 0.5, 0.5, 0.2, 0.5]])
    labels = np.array([[1, 0, 1, 0, 0]])
    # pos 0.9 beats 3 negatives; pos 0.5: tie, win, tie -> 2; total 5 of 6 pairs
    auc = per_request_metrics(scores, labels, k=3)["AUC"]
    assert auc[0] == pytest.approx(5 / 6, abs=1e-12)
    assert auc[0] == pytest.approx(roc_auc_score(labels[0], scores[0]), abs=1e-12)


def test_auc_nan_for_single_class_rows():
    scores = np.array([[0.3, 0.1, 0.2], [0.3, 0.1, 0.2], [0.3, 0.1, 0.2]])
    labels = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 0]])
    m = per_request_metrics(scores, labels, k=2)
    assert np.isnan(m["AUC"][0]) and np.isnan(m["AUC"][1])
    assert m["AUC"][2] == pytest.approx(0.0)
    # n = 0 edge cases of §8
    assert m["N@2"][1] == 0 and m["M@2"][1] == 0 and m["F1@2"][1] == 0
    assert np.isnan(m["Recall@2"][1])
    # k is reflected in the key names
    assert set(m) == {"H@2", "N@2", "M@2", "F1@2", "AUC", "Recall@2", "HitRate@2", "n_pos", "hits"}


# ---------------------------------------------------------------- invariants

def test_invariants_random():
    rng = np.random.default_rng(0)
    scores, labels = _random_lists(rng, R=500, n_max=8, ties=True)
    m = per_request_metrics(scores, labels, k=K)
    assert set(m) == set(METRIC_KEYS) | {"n_pos", "hits"}
    assert m["n_pos"].dtype.kind == "i" and m["hits"].dtype.kind == "i"
    np.testing.assert_array_equal(m["n_pos"], labels.sum(1))
    h, n = m["hits"], m["n_pos"]
    np.testing.assert_array_equal(m["H@6"] * K, h)
    np.testing.assert_allclose(m["F1@6"], 2 * h / (K + n), atol=1e-15)
    p, rec = m["H@6"], m["Recall@6"]
    pos = h > 0
    np.testing.assert_allclose(m["F1@6"][pos], 2 * p[pos] * rec[pos] / (p[pos] + rec[pos]), rtol=1e-12)
    assert (m["F1@6"][~pos] == 0).all()
    np.testing.assert_array_equal(m["HitRate@6"], (h > 0).astype(float))
    for key in METRIC_KEYS:
        v = m[key][~np.isnan(m[key])]
        assert ((v >= 0) & (v <= 1)).all(), key
    assert np.isnan(m["Recall@6"][n == 0]).all() and not np.isnan(m["Recall@6"][n > 0]).any()


def test_oracle_scorer():
    rng = np.random.default_rng(1)
    _, labels = _random_lists(rng, R=400, n_max=8)
    retriever = np.linspace(1.0, 0.0, L)[None, :].repeat(len(labels), 0)  # decreasing with column
    m = per_request_metrics(labels + 1e-3 * retriever, labels, k=K)
    n = m["n_pos"]
    np.testing.assert_allclose(m["H@6"], np.minimum(n, K) / K, atol=1e-15)
    ok = (n >= 1) & (n < L)
    assert ok.sum() > 300
    for key in ("N@6", "M@6", "AUC"):
        np.testing.assert_allclose(m[key][ok], 1.0, atol=1e-12, err_msg=key)


def test_constant_scorer_equals_identity_order():
    rng = np.random.default_rng(2)
    _, labels = _random_lists(rng, R=300)
    const = per_request_metrics(np.zeros((300, L)), labels, k=K)
    ident = per_request_metrics(-np.arange(L, dtype=float)[None, :].repeat(300, 0), labels, k=K)
    for key in ("H@6", "N@6", "M@6", "F1@6", "Recall@6", "HitRate@6", "hits", "n_pos"):
        np.testing.assert_array_equal(const[key], ident[key], err_msg=key)
    ok = (const["n_pos"] > 0) & (const["n_pos"] < L)
    np.testing.assert_array_equal(const["AUC"][ok], 0.5)  # all ties
    np.testing.assert_array_equal(ranking(np.zeros((3, L)), k=K), np.tile(np.arange(K), (3, 1)))


def test_ranking_stable_ties_and_neg_inf():
    s = np.array([[0.0, 2.0, 1.0, 2.0, -np.inf, 1.0]])
    np.testing.assert_array_equal(ranking(s, k=5), [[1, 3, 2, 5, 0]])
    np.testing.assert_array_equal(ranking(s, k=6)[0, -1], 4)


# ---------------------------------------------------------------- cross-checks

def _reference_row(score, label, k):
    order = sorted(range(len(score)), key=lambda j: -score[j])  # Python sort is stable
    rel = [int(label[j]) for j in order[:k]]
    n = int(sum(label))
    hits = sum(rel)
    prec = hits / k
    f1 = 0.0 if hits == 0 else 2 * prec * (hits / n) / (prec + hits / n)
    ap, seen = 0.0, 0
    for i, r in enumerate(rel, start=1):
        if r:
            seen += 1
            ap += seen / i
    ap = ap / min(n, k) if n else 0.0
    dcg = sum(r / math.log2(i + 1) for i, r in enumerate(rel, start=1))
    idcg = sum(1 / math.log2(i + 1) for i in range(1, min(n, k) + 1))
    return prec, f1, ap, (dcg / idcg if idcg else 0.0)


def test_cross_check_sklearn_and_reference():
    rng = np.random.default_rng(3)
    scores, labels = _random_lists(rng, R=200, n_max=6)
    labels[labels.sum(1) == 0, 0] = 1  # n >= 1
    assert all(len(np.unique(row)) == L for row in scores)  # tie-free
    m = per_request_metrics(scores, labels, k=K)
    for r in range(200):
        assert m["N@6"][r] == pytest.approx(ndcg_score(labels[r:r + 1], scores[r:r + 1], k=K), abs=1e-9)
        assert m["AUC"][r] == pytest.approx(roc_auc_score(labels[r], scores[r]), abs=1e-9)
        prec, f1, ap, nd = _reference_row(scores[r], labels[r], K)
        assert m["H@6"][r] == pytest.approx(prec, abs=1e-12)
        assert m["F1@6"][r] == pytest.approx(f1, abs=1e-12)
        assert m["M@6"][r] == pytest.approx(ap, abs=1e-12)
        assert m["N@6"][r] == pytest.approx(nd, abs=1e-12)


def test_reference_with_ties_and_other_k():
    # with ties the stable (retriever-order) tie-break must match the stable Python sort
    rng = np.random.default_rng(4)
    scores, labels = _random_lists(rng, R=200, n_max=12, ties=True)
    for k in (1, 3, 10):
        m = per_request_metrics(scores, labels, k=k)
        for r in range(0, 200, 7):
            prec, f1, ap, nd = _reference_row(scores[r], labels[r], k)
            assert m[f"H@{k}"][r] == pytest.approx(prec, abs=1e-12)
            assert m[f"F1@{k}"][r] == pytest.approx(f1, abs=1e-12)
            assert m[f"M@{k}"][r] == pytest.approx(ap, abs=1e-12)
            assert m[f"N@{k}"][r] == pytest.approx(nd, abs=1e-12)


# ---------------------------------------------------------------- masking

def test_padding_leaves_metrics_unchanged():
    rng = np.random.default_rng(5)
    scores, labels = _random_lists(rng, R=300, ties=True)
    base = per_request_metrics(scores, labels, k=K)
    P = 7
    pad_scores = rng.normal(size=(300, P)) * 1e6
    pad_scores[:, 0] = np.inf
    pad_scores[:, 1] = np.nan
    pad_scores[:, 2] = 0.0  # ties with real scores
    s2 = np.concatenate([scores, pad_scores], axis=1)
    y2 = np.concatenate([labels, np.zeros((300, P), dtype=int)], axis=1)
    mask = np.concatenate([np.ones((300, L), bool), np.zeros((300, P), bool)], axis=1)
    _assert_same(per_request_metrics(s2, y2, k=K, mask=mask), base)
    # padded labels are ignored whatever they hold (e.g. a -1 sentinel)
    y2[:, L:] = -1
    _assert_same(per_request_metrics(s2, y2, k=K, mask=mask), base)
    assert global_auc(s2, y2, mask=mask) == pytest.approx(global_auc(scores, labels), abs=1e-12)


def test_padding_vs_real_neg_inf_and_short_lists():
    # a real -inf candidate must still rank above padding placed before it
    s = np.array([[1.0, 0.0, 5.0, -np.inf]])
    y = np.array([[0, 0, 0, 1]])
    mask = np.array([[True, False, False, True]])
    m = per_request_metrics(s, y, k=2, mask=mask)
    assert m["hits"][0] == 1 and m["AUC"][0] == 0.0
    # fewer real candidates than k: padded slots fill the top-k with label 0
    m = per_request_metrics(np.array([[0.5, 0.1, 9.0]]), np.array([[1, 0, 0]]), k=3,
                            mask=np.array([[True, False, False]]))
    assert m["H@3"][0] == pytest.approx(1 / 3) and m["N@3"][0] == 1.0 and np.isnan(m["AUC"][0])


# ---------------------------------------------------------------- validation / types

@pytest.mark.parametrize(
    "scores, labels, k, mask, match",
    [
        (np.zeros((2, 5)), np.zeros((2, 4)), 3, None, "shape"),
        (np.zeros((2, 5)), np.zeros((2, 5)), 3, np.ones((2, 4), bool), "shape"),
        (np.zeros(5), np.zeros(5), 3, None, "2-D"),
        (np.zeros((2, 5)), np.full((2, 5), 2), 3, None, "binary"),
        (np.zeros((2, 5)), np.zeros((2, 5)), 6, None, "larger"),
        (np.array([[0.1, np.nan, 0.3]]), np.zeros((1, 3)), 2, None, "NaN"),
    ],
)
def test_bad_inputs_raise(scores, labels, k, mask, match):
    with pytest.raises(ValueError, match=match):
        per_request_metrics(scores, labels, k=k, mask=mask)


def test_bad_inputs_other_functions():
    with pytest.raises(ValueError, match="larger"):
        ranking(np.zeros((2, 5)), k=6)
    with pytest.raises(ValueError, match="NaN"):
        ranking(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(ValueError, match="binary"):
        global_auc(np.zeros((1, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError):
        gauc(np.zeros(3), np.zeros(4))


def test_torch_input_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    scores, labels = _random_lists(rng, R=100, ties=True)
    mask = np.ones_like(labels, dtype=bool)
    mask[:, -5:] = False
    labels[:, -5:] = 0
    ref = per_request_metrics(scores, labels, k=K, mask=mask)
    got = per_request_metrics(torch.tensor(scores, dtype=torch.float64, requires_grad=True),
                              torch.tensor(labels), k=K, mask=torch.tensor(mask))
    _assert_same(got, ref)
    np.testing.assert_array_equal(ranking(torch.tensor(scores), k=K), ranking(scores, k=K))
    assert global_auc(torch.tensor(scores), torch.tensor(labels)) == global_auc(scores, labels)


# ---------------------------------------------------------------- pooled / weighted AUC

def test_global_auc_matches_sklearn():
    rng = np.random.default_rng(7)
    scores, labels = _random_lists(rng, R=100, ties=True)
    assert global_auc(scores, labels) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-12)
    assert np.isnan(global_auc(np.zeros((2, 3)), np.zeros((2, 3))))


def test_gauc_by_hand():
    auc = np.array([0.5, 1.0, np.nan, 0.25])
    n_pos = np.array([2, 1, 3, 4])
    # (2*0.5 + 1*1 + 4*0.25) / (2+1+4) = 3/7
    assert gauc(auc, n_pos) == pytest.approx(3 / 7, abs=1e-12)
    assert np.isnan(gauc(np.array([np.nan]), np.array([1])))
    # end to end from per_request_metrics
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6], [0.1, 0.2, 0.3, 0.4]])
    labels = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    m = per_request_metrics(scores, labels, k=2)
    np.testing.assert_allclose(m["AUC"][:2], [1.0, 0.0])
    assert gauc(m["AUC"], m["n_pos"]) == pytest.approx((2 * 1.0 + 1 * 0.0) / 3, abs=1e-12)


def test_mean_metrics_nan_aware():
    per = {"H@6": np.array([0.5, 0.0]), "AUC": np.array([np.nan, 0.75]), "Recall@6": np.array([np.nan, np.nan]),
           "n_pos": np.array([1, 3])}
    out = mean_metrics(per)
    assert out["H@6"] == 0.25 and out["AUC"] == 0.75 and np.isnan(out["Recall@6"]) and out["n_pos"] == 2.0
    assert all(isinstance(v, float) for v in out.values())
