"""k-core, ordering, windows, splits, folds and the retriever's row masks (protocol.md §3–§5)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.data import protocol
from benchmark.data.protocol import TEST, TRAIN, VAL


def frame_from(users, items, ts=None, labels=None) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({"user": users, "item": items,
                         "timestamp": ts if ts is not None else np.arange(n),
                         "feedback": np.ones(n), "label": labels if labels is not None else np.ones(n, dtype=np.int8)})


def random_log(seed=0, n=4000, users=120, items=80):
    rng = np.random.default_rng(seed)
    return frame_from(rng.zipf(1.6, n) % users, rng.zipf(1.4, n) % items, rng.integers(0, 500, n),
                      (rng.random(n) < 0.8).astype(np.int8))


@pytest.mark.parametrize("k", [2, 5, 10])
def test_k_core_is_a_fixed_point_and_order_free(k):
    frame = random_log()
    keep = protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), k)
    kept = frame[keep]
    assert kept.groupby("user").size().min() >= k and kept.groupby("item").size().min() >= k
    again = protocol.k_core(kept["user"].to_numpy(), kept["item"].to_numpy(), k)
    assert again.all()  # nothing more to remove
    # maximality: every dropped row had a user or item that could not reach k among kept rows + itself
    shuffled = frame.sample(frac=1.0, random_state=3)
    keep2 = protocol.k_core(shuffled["user"].to_numpy(), shuffled["item"].to_numpy(), k)
    assert set(shuffled.index[keep2]) == set(frame.index[keep])


def test_k_core_cascades():
    # user 9 has 2 rows; removing it drops item 7 below 2, which drops user 1's row of item 7 ...
    frame = frame_from([1, 1, 2, 2, 9, 9, 3, 3], [5, 7, 5, 6, 7, 8, 5, 6])
    keep = protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), 2)
    assert sorted(map(tuple, frame[keep][["user", "item"]].to_numpy())) == [(2, 5), (2, 6), (3, 5), (3, 6)]


def test_dedup_keeps_earliest_and_sort_is_stable():
    frame = frame_from([1, 1, 1, 1], [5, 6, 5, 7], ts=[20, 10, 5, 10])
    dedup = protocol.deduplicate(frame)
    assert sorted(dedup["timestamp"].tolist()) == [5, 10, 10]
    data = protocol.to_interactions(dedup)
    # ties (items 6 and 7 both at t=10) keep file order: 6 before 7
    assert data.item_ids[data.item - 1].tolist() == [5, 6, 7]


def test_codes_do_not_depend_on_file_order():
    frame = random_log(1)
    a = protocol.to_interactions(frame)
    b = protocol.to_interactions(frame.iloc[::-1].reset_index(drop=True))
    assert (a.user_ids == b.user_ids).all() and (a.item_ids == b.item_ids).all()


def test_window_counts_rules():
    lengths = np.array([20, 13, 6])
    counts = protocol.window_counts(lengths, 6)
    assert counts["R1"] == 3 + 2 + 1
    assert counts["R2"] == 3 + 2 + 0
    assert counts["R3_h2"] == 3 + 1 + 0 and counts["R3_h5"] == 2 + 1 + 0


def test_windows_end_aligned_splits_and_history():
    n = [20, 13, 8]
    users = np.repeat([0, 1, 2], n)
    items = np.concatenate([np.arange(1, k + 1) + 100 * u for u, k in enumerate(n)])
    data = protocol.to_interactions(frame_from(users, items))
    req = protocol.make_requests(data, size=6, n_folds=5, seed=0)
    assert len(req) == 3 + 2 + 1
    for u, k in enumerate(n):
        mine = req.user == u
        starts = np.sort(req.start[mine] - data.user_ptr[u])
        assert starts.tolist() == list(range(k - 6 * mine.sum(), k, 6))  # end-aligned, non-overlapping
        splits = req.split[mine][np.argsort(req.window[mine])]
        expected = [TRAIN] * (mine.sum() - 2) + [VAL, TEST] if mine.sum() >= 2 else [TEST]
        assert splits.tolist() == expected[-mine.sum():]
    hist, labels, length = protocol.histories(data, req, 50)
    for r in range(len(req)):
        begin = data.user_ptr[req.user[r]]
        before = data.item[begin:req.start[r]]
        assert length[r] == len(before)
        assert hist[r, 50 - length[r]:].tolist() == before.tolist()  # oldest first, strictly before
        assert (hist[r, : 50 - length[r]] == 0).all()
    exp, _ = protocol.exposed(data, req, 6)
    assert not np.isin(exp[0], hist[0]).any()


def test_folds_spread_each_users_train_windows():
    users = np.repeat(np.arange(10), 66)
    data = protocol.to_interactions(frame_from(users, np.tile(np.arange(66), 10)))
    req = protocol.make_requests(data, 6, n_folds=5, seed=1)
    train = req.split == TRAIN
    assert (req.fold[~train] == -1).all() and set(req.fold[train]) == set(range(5))
    for u in range(10):
        counts = np.bincount(req.fold[train & (req.user == u)], minlength=5)
        assert counts.max() - counts.min() <= 1  # 9 train windows per user over 5 folds
    again = protocol.make_requests(data, 6, n_folds=5, seed=1)
    assert (again.fold == req.fold).all()


def test_retriever_rows_never_touch_val_or_test_windows():
    frame = random_log(2, n=6000)
    frame = frame[protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), 12)]
    data = protocol.to_interactions(protocol.deduplicate(frame))
    req = protocol.make_requests(data, 6, 5, 0)
    rows = protocol.retriever_rows(data, req, 6, holdout=0.2)
    eval_rows = protocol.gather_rows(req.start[req.split != TRAIN], np.arange(6)).ravel()
    assert not rows.train[eval_rows].any() and not rows.holdout[eval_rows].any()
    assert not (rows.train & rows.holdout).any()
    for u in range(data.n_users):
        sl = slice(data.user_ptr[u], data.user_ptr[u + 1])
        t, h = np.flatnonzero(rows.train[sl]), np.flatnonzero(rows.holdout[sl])
        if len(t) and len(h):
            assert t.max() < h.min()  # the hold-out is the chronological tail
    # every row of a fold-k train window carries fold k, so fold model k can exclude exactly them
    train_rows = protocol.gather_rows(req.start[req.split == TRAIN], np.arange(6))
    assert (rows.fold[train_rows] == req.fold[req.split == TRAIN][:, None]).all()
