"""Candidate construction (protocol.md §6) and its always-on diagnostics (§6.2).

A list = the ``L`` exposed items of a window (logged labels) + ``C - L`` fillers (label 0) chosen
by the scoring retriever outside the user's history and the window, ordered by retriever score
(descending; ties by a fixed per-item hash), never "exposed first". Train requests are scored by
the fold model that never saw their window, val/test requests by the full retriever.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmark import metrics
from benchmark.config import DataConfig
from benchmark.data import protocol, retriever
from benchmark.data.protocol import SPLITS, TEST


def item_hash(codes: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random key per item code (splitmix64), used only to break score ties so
    that neither item id order nor "exposed first" can leak into the initial order."""
    z = codes.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _excluded_pairs(data: protocol.Interactions, users: np.ndarray, starts: np.ndarray, size: int):
    """(request-in-chunk, item) of everything the user did up to the end of each window:
    history and exposed items are never fillers (§6.1)."""
    begin = data.user_ptr[users]
    lengths = starts + size - begin
    local = np.repeat(np.arange(len(users)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return torch.from_numpy(local), torch.from_numpy(data.item[np.repeat(begin, lengths) + offsets].astype(np.int64))


def _score_matched(raw: torch.Tensor, blocked: torch.Tensor, exposed_logits: torch.Tensor, n_fill: int,
                   gen: torch.Generator, bins: int = 10) -> torch.Tensor:
    """Fillers drawn per exposed item from the items in the same score decile of this request's
    score distribution (over allowed items), so fillers and exposed items have matched scores
    (§6.2). Items short in a decile are topped up uniformly from the allowed ones."""
    n, width = raw.shape
    allowed = ~blocked
    n_allowed = allowed.sum(1, keepdim=True)
    sorted_allowed, _ = torch.sort(torch.where(allowed, raw, torch.inf), dim=1)
    # decile of each item = (# allowed items scoring above it) / n_allowed
    above = n_allowed - torch.searchsorted(sorted_allowed.contiguous(), raw.contiguous(), right=True)
    item_bin = (above * bins // n_allowed.clamp(min=1)).clamp(max=bins - 1)
    above_exp = n_allowed - torch.searchsorted(sorted_allowed.contiguous(), exposed_logits.contiguous(), right=True)
    exp_bin = (above_exp.clamp(min=0) * bins // n_allowed.clamp(min=1)).clamp(max=bins - 1)
    size = exposed_logits.shape[1]
    quota_each = torch.full((size,), n_fill // size)
    quota_each[: n_fill % size] += 1
    quota = torch.zeros(n, bins, dtype=torch.long).scatter_add_(1, exp_bin, quota_each.expand(n, size).clone())
    noise = torch.rand(n, width, generator=gen)
    key = torch.where(allowed, item_bin.double() + noise.double(), torch.inf)
    order = torch.argsort(key, dim=1)
    sorted_bin = torch.gather(item_bin, 1, order)
    first_of_bin = torch.searchsorted(torch.gather(key, 1, order).contiguous(),
                                      torch.arange(bins, dtype=torch.double).expand(n, bins).contiguous())
    position = torch.arange(width).expand(n, width) - torch.gather(first_of_bin, 1, sorted_bin)
    chosen_sorted = (position < torch.gather(quota, 1, sorted_bin)) & torch.gather(allowed, 1, order)
    chosen = torch.zeros_like(allowed).scatter_(1, order, chosen_sorted)
    priority = torch.where(allowed, chosen.double() * 2 + torch.rand(n, width, generator=gen).double(), -1.0)
    return torch.topk(priority, n_fill, dim=1).indices


def _build_chunk(model: retriever.MF, data: protocol.Interactions, users: np.ndarray, starts: np.ndarray,
                 exp_items: np.ndarray, cfg: DataConfig, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Candidate item codes and MF logits ``[n, C]`` (unsorted) for one chunk of requests."""
    n_fill = cfg.n_candidates - cfg.list_size
    with torch.no_grad():
        raw = model.all_items(torch.from_numpy(users.astype(np.int64)))
    blocked = torch.zeros_like(raw, dtype=torch.bool)
    blocked[:, 0] = True
    rows, cols = _excluded_pairs(data, users, starts, cfg.list_size)
    blocked[rows, cols] = True
    if cfg.fill == "topk":
        fill = torch.topk(raw.masked_fill(blocked, -torch.inf), n_fill, dim=1).indices
    elif cfg.fill == "random":
        key = torch.rand(raw.shape, generator=gen).masked_fill(blocked, -1.0)
        fill = torch.topk(key, n_fill, dim=1).indices
    else:
        exposed_logits = torch.gather(raw, 1, torch.from_numpy(exp_items.astype(np.int64)))
        fill = _score_matched(raw, blocked, exposed_logits, n_fill, gen)
    if bool(torch.gather(blocked, 1, fill).any()):
        raise RuntimeError("too few items outside the users' histories to fill the candidate lists; "
                           "lower data.n_candidates or raise data.k_core")
    items = np.concatenate([exp_items, fill.numpy()], axis=1).astype(np.int32)
    logits = torch.gather(raw, 1, torch.from_numpy(items.astype(np.int64))).numpy()
    return items, logits


def build_candidates(data: protocol.Interactions, req: protocol.Requests, models: retriever.CrossFittedRetriever,
                     cfg: DataConfig, progress: bool = True) -> dict[str, np.ndarray]:
    exp_items, exp_labels = protocol.exposed(data, req, cfg.list_size)
    n_req, n_cand = len(req), cfg.n_candidates
    items = np.zeros((n_req, n_cand), dtype=np.int32)
    logits = np.zeros((n_req, n_cand), dtype=np.float32)
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.data_seed, 4]).integers(2**31)))
    chunk = max(64, min(4096, (1 << 22) // (data.n_items + 1)))
    groups = [(f, np.flatnonzero(req.fold == f)) for f in range(-1, cfg.n_folds)]
    bar = tqdm(total=n_req, desc="candidate lists", unit="req", disable=not progress, leave=False)
    for fold, idx in groups:
        model = models.model_for(fold)
        for lo in range(0, len(idx), chunk):
            part = idx[lo:lo + chunk]
            items[part], logits[part] = _build_chunk(model, data, req.user[part], req.start[part],
                                                     exp_items[part], cfg, gen)
            bar.update(len(part))
    bar.close()
    labels = np.zeros((n_req, n_cand), dtype=np.int8)
    labels[:, : cfg.list_size] = exp_labels
    exposed = np.zeros((n_req, n_cand), dtype=bool)
    exposed[:, : cfg.list_size] = True
    # retriever order: logit descending, ties by the fixed item hash (never by construction order)
    order = np.lexsort((item_hash(items), -logits.astype(np.float64)), axis=1)
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return {"items": take(items), "scores": (1.0 / (1.0 + np.exp(-take(logits).astype(np.float64)))).astype(np.float32),
            "labels": take(labels), "exposed": take(exposed)}


def diagnostics(arrays: dict[str, np.ndarray], k: int) -> dict[str, Any]:
    out: dict[str, Any] = {"exposed_vs_filler_auc": {}, "positive_vs_rest_auc": {}}
    for s, name in enumerate(SPLITS):
        mask = arrays["split"] == s
        if not mask.any():
            continue
        scores = arrays["scores"][mask]
        out["exposed_vs_filler_auc"][name] = float(np.nanmean(
            metrics.per_request_metrics(scores, arrays["exposed"][mask].astype(np.int8), k=k)["AUC"]))
        pos = metrics.per_request_metrics(scores, arrays["labels"][mask], k=k)["AUC"]
        out["positive_vs_rest_auc"][name] = float(np.nanmean(pos)) if np.isfinite(pos).any() else None
    test = arrays["split"] == TEST
    per_req = metrics.per_request_metrics(arrays["scores"][test], arrays["labels"][test], k=k)
    order = metrics.mean_metrics(per_req)
    out["retriever_order"] = {m: order[m] for m in (f"H@{k}", f"N@{k}", f"M@{k}", f"F1@{k}", "AUC", f"Recall@{k}")}
    out["retriever_order"]["AUC_global"] = metrics.global_auc(arrays["scores"][test], arrays["labels"][test])
    out["retriever_order"]["GAUC"] = metrics.gauc(per_req["AUC"], per_req["n_pos"])
    test_pos = out["positive_vs_rest_auc"].get("test")
    out["informative"] = test_pos is not None and test_pos > 0.5
    return out
