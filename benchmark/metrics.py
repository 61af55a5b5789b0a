"""Per-request reranking metrics (docs/protocol.md §8 "Metrics").

Every request is one row of an (R, L) score matrix over its candidate list, which is
already in retriever order. The displayed list is the top-k by score with a *stable*
sort, so ties fall back to the retriever rank (§8, §9).

Per request r, with n = positives among the real candidates and h = hits in the top-k:

- ``H@k``        = h / k  (precision-like; the paper's "Hit Ratio", §2.2 / §11.1)
- ``Recall@k``   = h / n  (NaN when n = 0)
- ``HitRate@k``  = 1[h > 0]
- ``F1@k``       = 2 h / (k + n)  (0 when n = 0 or h = 0)
- ``N@k``        = binary-gain DCG@k / IDCG over min(n, k) slots (0 when n = 0)
- ``M@k``        = (1 / min(n, k)) * sum_{i<=k} P@i * rel_i  (0 when n = 0; *not* LibRerank's ÷hits)
- ``AUC``        = Mann-Whitney AUC from average ranks, ties count 1/2
                   (NaN when the request has no positive or no negative)

Functions here return per-request vectors; averaging is left to callers
(``mean_metrics`` is a nan-aware convenience for the macro average of §8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["ranking", "per_request_metrics", "global_auc", "gauc", "mean_metrics"]


# --------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------

def _to_numpy(x: Any) -> np.ndarray:
    # torch tensors: detach/cpu so tensors that require grad or live on a GPU convert too.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
    return np.asarray(x)


def _check_2d(name: str, a: np.ndarray) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (requests, candidates) array, got shape {a.shape}")


def _check_k(k: Any, n_cols: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_cols:
        raise ValueError(f"k={k} is larger than the candidate list length L={n_cols}")
    return k


def _prepare(scores: Any, labels: Any, mask: Any):
    """Validate and return (scores float64, labels int8, mask bool or None if all real)."""
    s = _to_numpy(scores)
    y = _to_numpy(labels)
    _check_2d("scores", s)
    _check_2d("labels", y)
    if y.shape != s.shape:
        raise ValueError(f"labels shape {y.shape} does not match scores shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)

    if mask is None:
        m = None
    else:
        m = _to_numpy(mask)
        _check_2d("mask", m)
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} does not match scores shape {s.shape}")
        if m.dtype != np.bool_:
            if not np.isin(m, (0, 1)).all():
                raise ValueError("mask must be boolean (True = real candidate)")
            m = m.astype(bool)
        if m.all():
            m = None  # fast path; identical semantics

    # Padded slots may hold anything (sentinel labels, NaN scores): validate real slots only.
    real_s = s if m is None else s[m]
    if np.isnan(real_s).any():
        raise ValueError("scores contain NaN for real candidates")
    real_y = y if m is None else y[m]
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels must be binary {{0, 1}}, got dtype {y.dtype}")
        if not ((real_y == 0) | (real_y == 1)).all():
            bad = np.unique(real_y[~((real_y == 0) | (real_y == 1))])[:5]
            raise ValueError(f"labels must be binary {{0, 1}}; found values {bad.tolist()}")
    y = (y == 1).astype(np.int8)
    if m is not None:
        y = np.where(m, y, np.int8(0))
        s = np.where(m, s, -np.inf)
    return s, y, m


def _order(s: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """Full stable ordering of each row by score descending (real candidates first)."""
    if m is None:
        return np.argsort(-s, axis=1, kind="stable")
    # Primary key: real before padded, so a real candidate scored -inf still precedes
    # padding that sits earlier in the column order. lexsort is stable.
    return np.lexsort((-s, ~m), axis=-1)


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

def ranking(scores: Any, k: int = 6) -> np.ndarray:
    """Indices (R, k) of the top-k candidates per row, by score descending.

    Stable sort on the negated scores, so ties keep the input (retriever) column order.
    ``-inf`` is allowed (e.g. padded slots) and sorts last; NaN raises ValueError.
    """
    s = _to_numpy(scores)
    _check_2d("scores", s)
    k = _check_k(k, s.shape[1])
    s = s.astype(np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def per_request_metrics(scores: Any, labels: Any, k: int = 6, mask: Any = None) -> dict[str, np.ndarray]:
    """Per-request metric vectors (protocol.md §8); never averaged.

    scores: float (R, L); labels: {0, 1} (R, L); mask: bool (R, L), True = real candidate
    (None = all real). Padded slots are treated as score -inf and label 0 and do not enter
    n_pos or the AUC. Returns keys ``H@k, N@k, M@k, F1@k, AUC, Recall@k, HitRate@k`` (float64)
    and ``n_pos, hits`` (int64), each of shape (R,).
    """
    s, y, m = _prepare(scores, labels, mask)
    R, L = s.shape
    k = _check_k(k, L)

    top = _order(s, m)[:, :k]
    rel = np.take_along_axis(y, top, axis=1).astype(np.float64)  # (R, k)

    n_pos = y.sum(axis=1, dtype=np.int64)
    hits = rel.sum(axis=1).astype(np.int64)
    has_pos = n_pos > 0
    n_f = n_pos.astype(np.float64)
    hits_f = hits.astype(np.float64)
    n_cap = np.minimum(n_pos, k)

    H = hits_f / k
    F1 = 2.0 * hits_f / (k + n_f)  # n = 0 implies h = 0, so this is already 0 there
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(has_pos, hits_f / n_f, np.nan)
    hit_rate = (hits > 0).astype(np.float64)

    ranks = np.arange(1, k + 1, dtype=np.float64)
    disc = 1.0 / np.log2(ranks + 1.0)
    dcg = rel @ disc
    idcg_table = np.concatenate(([0.0], np.cumsum(disc)))  # idcg_table[j] = IDCG with j positives
    idcg = idcg_table[n_cap]
    ndcg = np.divide(dcg, idcg, out=np.zeros(R), where=idcg > 0)

    prec_at_i = np.cumsum(rel, axis=1) / ranks
    ap_sum = (prec_at_i * rel).sum(axis=1)
    mapk = np.divide(ap_sum, n_cap, out=np.zeros(R), where=n_cap > 0)

    auc = _per_request_auc(s, y, m, n_pos)

    return {
        f"H@{k}": H,
        f"N@{k}": ndcg,
        f"M@{k}": mapk,
        f"F1@{k}": F1,
        "AUC": auc,
        f"Recall@{k}": recall,
        f"HitRate@{k}": hit_rate,
        "n_pos": n_pos,
        "hits": hits,
    }


def _per_request_auc(s: np.ndarray, y: np.ndarray, m: np.ndarray | None, n_pos: np.ndarray) -> np.ndarray:
    R, L = s.shape
    if R == 0:
        return np.zeros(0)
    if m is None:
        rk = rankdata(s, axis=1)
        n_real = np.full(R, L, dtype=np.int64)
    else:
        # NaN + nan_policy="omit" ranks each row among its real candidates only, so
        # padding cannot shift the ranks (it would if it tied with a real -inf score).
        rk = rankdata(np.where(m, s, np.nan), axis=1, nan_policy="omit")
        rk = np.where(m, rk, 0.0)
        n_real = m.sum(axis=1, dtype=np.int64)
    n_neg = n_real - n_pos
    p = n_pos.astype(np.float64)
    q = n_neg.astype(np.float64)
    u = (rk * y).sum(axis=1) - p * (p + 1.0) / 2.0
    valid = (n_pos > 0) & (n_neg > 0)
    return np.divide(u, p * q, out=np.full(R, np.nan), where=valid)


def global_auc(scores: Any, labels: Any, mask: Any = None) -> float:
    """Pooled ROC-AUC (sklearn ``roc_auc_score``) over all real candidates of all requests.

    Returns NaN if the pooled labels contain a single class (sklearn would warn and
    return NaN itself). Only meaningful for scores comparable across lists (§8).
    """
    from sklearn.metrics import roc_auc_score

    s, y, m = _prepare(scores, labels, mask)
    if m is None:
        s_flat, y_flat = s.ravel(), y.ravel()
    else:
        s_flat, y_flat = s[m], y[m]
    n_pos = int(y_flat.sum())
    if n_pos == 0 or n_pos == y_flat.size:
        return float("nan")
    return float(roc_auc_score(y_flat, s_flat))


def gauc(auc: Any, n_pos: Any) -> float:
    """Positive-weighted mean of per-request AUCs (RecBole GAUC): sum n_r AUC_r / sum n_r.

    Requests whose AUC is not finite (no positive or no negative) are skipped; NaN if
    nothing remains.
    """
    a = _to_numpy(auc).astype(np.float64, copy=False)
    w = _to_numpy(n_pos).astype(np.float64, copy=False)
    if a.ndim != 1 or a.shape != w.shape:
        raise ValueError(f"auc and n_pos must be 1-D of equal length, got {a.shape} and {w.shape}")
    keep = np.isfinite(a)
    denom = w[keep].sum()
    if denom <= 0:
        return float("nan")
    return float((w[keep] * a[keep]).sum() / denom)


def mean_metrics(per_request: dict) -> dict[str, float]:
    """Nan-aware macro means of each per-request vector (NaN entries, e.g. AUC of
    single-class requests or Recall with n=0, are skipped; an all-NaN vector gives NaN)."""
    out: dict[str, float] = {}
    for key, vec in per_request.items():
        v = _to_numpy(vec).astype(np.float64, copy=False).ravel()
        finite = ~np.isnan(v)
        out[key] = float(v[finite].mean()) if finite.any() else float("nan")
    return out
