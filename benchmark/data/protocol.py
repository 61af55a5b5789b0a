"""The paper's data protocol as small pure functions (protocol.md §3–§5).

raw table -> dedup -> iterative k-core -> stable chronological order -> windows of ``L`` -> splits
-> cross-fitting folds and the retriever's training / hold-out rows.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from benchmark.errors import UserInputError

SPLITS = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2


@dataclasses.dataclass
class Interactions:
    """All interactions after filtering, grouped by user and chronological within a user.

    Users are coded 0..n_users-1 and items 1..n_items (0 is the padding item), both in sorted
    raw-id order, so codes do not depend on file order."""

    user: np.ndarray       # int32 [N]
    item: np.ndarray       # int32 [N]
    timestamp: np.ndarray  # int64 [N]
    feedback: np.ndarray   # float32 [N]
    label: np.ndarray      # int8 [N]
    user_ptr: np.ndarray   # int64 [n_users + 1], CSR offsets into the arrays above
    user_ids: np.ndarray   # raw ids, indexed by user code
    item_ids: np.ndarray   # raw ids, indexed by item code - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the earliest interaction of each (user, item) pair; ties keep file order (§3.1)."""
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy()))
    earliest = frame.iloc[order].drop_duplicates(["user", "item"], keep="first")
    return earliest.sort_index(kind="stable")


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the rows that survive the iterative k-core filter (a fixed point:
    every kept user and item has at least ``k`` kept rows). Order-independent, unlike a
    streaming filter (protocol.md §3.1)."""
    ucode = pd.factorize(users)[0]
    icode = pd.factorize(items)[0]
    keep = np.ones(len(ucode), dtype=bool)
    while True:
        ucount = np.bincount(ucode[keep], minlength=ucode.max() + 1 if len(ucode) else 0)
        icount = np.bincount(icode[keep], minlength=icode.max() + 1 if len(icode) else 0)
        new = keep & (ucount[ucode] >= k) & (icount[icode] >= k)
        if new.sum() == keep.sum():
            return new
        keep = new


def subsample_users(frame: pd.DataFrame, max_users: int | None, seed: int) -> pd.DataFrame:
    if max_users is None:
        return frame
    users = np.sort(frame["user"].unique())
    if max_users >= len(users):
        return frame
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return frame[frame["user"].isin(chosen)]


def to_interactions(frame: pd.DataFrame) -> Interactions:
    """Code ids and order rows by user, then timestamp, ties in file order (a stable sort)."""
    if frame.empty:
        raise UserInputError("no interactions left after filtering; lower data.k_core")
    user_ids, ucode = np.unique(frame["user"].to_numpy(), return_inverse=True)
    item_ids, icode = np.unique(frame["item"].to_numpy(), return_inverse=True)
    ts = frame["timestamp"].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(frame)), ts, ucode))
    counts = np.bincount(ucode, minlength=len(user_ids))
    return Interactions(
        user=ucode[order].astype(np.int32),
        item=(icode[order] + 1).astype(np.int32),
        timestamp=ts[order],
        feedback=frame["feedback"].to_numpy(np.float32)[order],
        label=frame["label"].to_numpy(np.int8)[order],
        user_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        user_ids=user_ids,
        item_ids=item_ids,
    )


def window_counts(lengths: np.ndarray, size: int) -> dict[str, int]:
    """Window totals under the counting rules R1–R3 of protocol.md §4.2 (before any filtering)."""
    out = {"R1": int((lengths // size).sum()), "R2": int(((lengths - 1) // size).sum())}
    for h in range(2, size):
        out[f"R3_h{h}"] = int((np.maximum(lengths - h, 0) // size).sum())
    return out


@dataclasses.dataclass
class Requests:
    """One row per window: end-aligned, non-overlapping windows of ``size`` per user (§4.1)."""

    user: np.ndarray       # int32 [R]
    start: np.ndarray      # int64 [R], global index of the window's first interaction
    window: np.ndarray     # int32 [R], chronological index of the window within its user
    split: np.ndarray      # int8  [R], TRAIN / VAL / TEST
    fold: np.ndarray       # int8  [R], cross-fitting fold of train windows, -1 otherwise

    def __len__(self) -> int:
        return len(self.user)

    def select(self, mask: np.ndarray) -> "Requests":
        return Requests(**{f.name: getattr(self, f.name)[mask] for f in dataclasses.fields(self)})


def make_requests(data: Interactions, size: int, n_folds: int, seed: int) -> Requests:
    """Windows start at n_u-size, n_u-2·size, …; the leading n_u mod size interactions are only
    history. Per user: last window test, second-to-last val, the rest train (§5.1). Train
    windows get cross-fitting folds, shuffled within each user so every fold sees every user (§5.3)."""
    lengths = np.diff(data.user_ptr)
    m = lengths // size
    user = np.repeat(np.arange(data.n_users, dtype=np.int32), m)
    first = np.repeat(np.cumsum(m) - m, m)
    window = (np.arange(len(user)) - first).astype(np.int32)
    m_u = m[user]
    start = data.user_ptr[user] + lengths[user] - size * (m_u - window)
    split = np.full(len(user), TRAIN, dtype=np.int8)
    split[window == m_u - 1] = TEST
    split[window == m_u - 2] = VAL
    rng = np.random.default_rng([seed, 1])
    key = rng.random(len(user))
    # rank of each train window among its user's train windows (val/test sort last) under a
    # random key, plus a random per-user offset: a user's train windows cycle through the folds
    order = np.lexsort((key, split != TRAIN, user))
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = np.arange(len(user)) - first[order]
    offset = rng.integers(0, n_folds, size=data.n_users)[user]
    fold = np.where(split == TRAIN, (rank + offset) % n_folds, -1).astype(np.int8)
    return Requests(user=user, start=start.astype(np.int64), window=window, split=split, fold=fold)


def gather_rows(start: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Global row indices ``start[:, None] + offsets`` (offsets may be negative)."""
    return start[:, None] + offsets[None, :]


def histories(data: Interactions, req: Requests, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last ``length`` items before each window (left-padded with item 0), their labels and
    the true history length. History is strictly before the window (§4.1)."""
    rows = gather_rows(req.start, np.arange(-length, 0))
    valid = rows >= data.user_ptr[req.user][:, None]
    rows = np.where(valid, rows, 0)
    items = np.where(valid, data.item[rows], 0).astype(np.int32)
    labels = np.where(valid, data.label[rows], 0).astype(np.int8)
    return items, labels, valid.sum(1).astype(np.int32)


def exposed(data: Interactions, req: Requests, size: int) -> tuple[np.ndarray, np.ndarray]:
    rows = gather_rows(req.start, np.arange(size))
    return data.item[rows], data.label[rows]


@dataclasses.dataclass
class RetrieverRows:
    """Which interactions the MF retriever may use (§5.2–§5.3).

    ``train`` / ``holdout``: row masks over all interactions. Only rows strictly before each user's
    first evaluation window (val, or test when a user has no val window) are eligible; of those the
    chronologically last ``holdout`` share per user is held out for early stopping and the AUC.
    ``fold``: the cross-fitting fold of the train window a row belongs to (-1: none), so fold model
    k excludes exactly the windows it will later score."""

    train: np.ndarray
    holdout: np.ndarray
    fold: np.ndarray


def retriever_rows(data: Interactions, req: Requests, size: int, holdout: float) -> RetrieverRows:
    n = len(data)
    eval_start = np.full(data.n_users, np.iinfo(np.int64).max)
    is_eval = req.split != TRAIN
    np.minimum.at(eval_start, req.user[is_eval], req.start[is_eval])
    row_user = data.user
    eligible = np.arange(n) < eval_start[row_user]
    n_elig = np.bincount(row_user[eligible], minlength=data.n_users)
    n_hold = np.floor(holdout * n_elig).astype(np.int64)
    pos_in_user = np.arange(n) - data.user_ptr[row_user]
    held = eligible & (pos_in_user >= (n_elig - n_hold)[row_user])
    fold = np.full(n, -1, dtype=np.int8)
    train_windows = req.split == TRAIN
    rows = gather_rows(req.start[train_windows], np.arange(size))
    fold[rows.ravel()] = np.repeat(req.fold[train_windows], size)
    return RetrieverRows(train=eligible & ~held, holdout=held, fold=fold)
