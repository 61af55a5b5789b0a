"""The shared candidate lists every method sees: the container, the on-disk cache and the
build pipeline (raw files -> protocol -> cross-fitted retriever -> candidates -> diagnostics).

The construction itself lives in ``candidates.py``; it and the retriever (both need torch) are
imported only when a build is needed, so loading cached lists stays fast.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.config import DataConfig, load_data_config
from benchmark.data import protocol, sources
from benchmark.data.protocol import SPLITS, TRAIN

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
"""Bump when list construction changes meaning: it is part of the cache key."""

PAPER_REFERENCE = {
    # DNR paper App. D.1 (reranker-stage table) and Table 8 (retriever AUC).
    "ml-1m": {"users": 6022, "items": 3043, "interactions": 995154, "windows": 161646, "retriever_auc": 0.7920},
    "kuairand": {"users": 89416, "items": 10395, "interactions": 3270132, "windows": 513010, "retriever_auc": 0.8962,
                 "dataset": "Kuaivideo (not KuaiRand-Pure; not comparable)"},
    "amazon-books": {"users": 35736, "items": 38121, "interactions": 1960674, "windows": 311386,
                     "retriever_auc": 0.8882, "dataset": "Amazon Books 2018 with ratings"},
}

ARRAY_FIELDS = ("user", "split", "fold", "window", "timestamp", "hist_items", "hist_labels", "hist_len",
                "items", "scores", "labels", "exposed")


@dataclasses.dataclass
class CandidateLists:
    """Requests of one dataset in three splits. Per request ``r``: ``items[r]`` the candidate
    item codes in retriever order (column = initial position), ``scores[r]`` the retriever
    scores (sigmoid of the MF logit), ``labels[r]`` the binary feedback (0 for fillers),
    ``exposed[r]`` which candidates were in the window, ``hist_items[r]`` the last items before
    the window (oldest first, left-padded with 0) with ``hist_labels``/``hist_len``; ``user``,
    ``split`` (0 train, 1 val, 2 test), ``fold`` (cross-fitting fold, -1 for val/test),
    ``window`` and ``timestamp`` (of the window's first interaction). ``meta`` holds counts,
    settings, provenance, diagnostics and timings."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.arrays["user"])

    @property
    def n_users(self) -> int:
        return self.meta["users"]

    @property
    def n_items(self) -> int:
        """Number of real items; item codes run 1..n_items and 0 is padding."""
        return self.meta["items"]

    def split(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        mask = self.arrays["split"] == SPLITS.index(name)
        out = {k: v[mask] for k, v in self.arrays.items()}
        out["request_id"] = np.flatnonzero(mask)
        return out

    def save(self, folder: Path) -> None:
        """Atomic: written into a temporary sibling folder, then renamed into place."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            np.savez(tmp / "lists.npz", **self.arrays)
            _write_json_atomic(tmp / "meta.json", self.meta)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: Path) -> "CandidateLists":
        meta = json.loads((folder / "meta.json").read_text())
        with np.load(folder / "lists.npz") as npz:
            arrays = {k: npz[k] for k in ARRAY_FIELDS}
        return cls(meta, arrays)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj))


# --------------------------------------------------------------------------------------------
# Build + cache
# --------------------------------------------------------------------------------------------

def _checksums(files: sources.ResolvedFiles, cache_dir: Path) -> dict[str, str]:
    """sha256 of each raw file, memoised by (path, size, mtime) so a cache hit stays fast on
    multi-GB releases."""
    memo_path = cache_dir / "checksums.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out, changed = {}, False
    for path in files.paths:
        stat = path.stat()
        key = str(path.resolve())
        entry = memo.get(key)
        if not entry or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sources.file_sha256(path)}
            memo[key], changed = entry, True
        out[path.name] = entry["sha256"]
    if changed:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=1))
            os.replace(tmp, memo_path)
        except OSError:
            log.warning("could not write %s; checksums will be recomputed next time", memo_path)
    return out


LIST_ONLY_SETTINGS = ("fill", "n_candidates", "history_len")
"""Settings that change the lists but not the retriever: changing them reuses the cached fits."""


def cache_key(dataset: str, layout: str, checksums: dict[str, str], cfg: DataConfig,
              retriever_only: bool = False) -> str:
    config = cfg.to_dict()
    if retriever_only:
        config = {k: v for k, v in config.items() if k not in LIST_ONLY_SETTINGS}
    payload = {"dataset": dataset, "layout": layout, "files": checksums, "config": config,
               "protocol_version": PROTOCOL_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_candidate_lists(dataset: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                          overrides: dict[str, Any] | None = None, download: bool = True, progress: bool = True,
                          rebuild: bool = False, n_jobs: int | None = None) -> tuple[CandidateLists, bool]:
    """Build (or load from the cache) the candidate lists of ``dataset``.

    Returns the lists and whether they came from the cache. The cache key is the sha256 of the
    raw input files plus the resolved protocol settings: a change of either rebuilds."""
    source = sources.get_source(dataset)
    cfg = load_data_config(source.name, overrides)
    cache = Path(cache_dir).expanduser() if cache_dir else sources.default_cache_dir()
    files = sources.resolve_files(source.name, data_dir, cache, download=download)
    checks = _checksums(files, cache)
    key = cache_key(source.name, files.layout.name, checks, cfg)
    folder = cache / "lists" / f"{source.name}-{key[:16]}"
    if folder.exists() and not rebuild:
        started = time.perf_counter()
        lists = CandidateLists.load(folder)
        lists.meta["load_seconds"] = time.perf_counter() - started
        return lists, True

    import torch

    from benchmark.data import candidates, retriever

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    frame, label_rule = sources.load_interactions(files, cfg.label)
    raw_rows = len(frame)
    lap("read")
    if cfg.dedup:
        frame = protocol.deduplicate(frame)
    frame = protocol.subsample_users(frame, cfg.max_users, cfg.data_seed)
    k = cfg.k_core if cfg.k_core is not None else files.layout.k_core
    frame = frame[protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), k)]
    frame = protocol.subsample_users(frame, cfg.sample_users, cfg.data_seed)
    data = protocol.to_interactions(frame)
    del frame
    lap("filter")
    req = protocol.make_requests(data, cfg.list_size, cfg.n_folds, cfg.data_seed)
    counts = protocol.window_counts(np.diff(data.user_ptr), cfg.list_size)
    _, exp_labels = protocol.exposed(data, req, cfg.list_size)
    no_pos = (exp_labels.sum(1) == 0) & (req.split != TRAIN)
    dropped = {name: int((no_pos & (req.split == s)).sum()) for s, name in enumerate(SPLITS)}
    rows = protocol.retriever_rows(data, req, cfg.list_size, cfg.mf_holdout)  # before the drop: §5.2
    req = req.select(~no_pos)
    lap("windows")
    n_jobs = n_jobs if n_jobs is not None else (os.cpu_count() or 1)
    fits_path = cache / "retriever" / f"{source.name}-{cache_key(source.name, files.layout.name, checks, cfg, True)[:16]}.pt"
    if fits_path.exists() and not rebuild:
        models, worker_peak, reused = retriever.CrossFittedRetriever.load(fits_path), 0.0, True
    else:
        models, worker_peak = retriever.fit_cross_fitted(data, rows, cfg, n_jobs, progress)
        models.save(fits_path)
        reused = False
    lap("retriever")
    arrays = candidates.build_candidates(data, req, models, cfg, progress)
    hist_items, hist_labels, hist_len = protocol.histories(data, req, cfg.history_len)
    arrays.update(user=req.user, split=req.split, fold=req.fold, window=req.window,
                  timestamp=data.timestamp[req.start], hist_items=hist_items, hist_labels=hist_labels,
                  hist_len=hist_len)
    lap("candidates")
    diag = candidates.diagnostics(arrays, cfg.list_size)
    lap("diagnostics")

    split_counts = {name: int((arrays["split"] == s).sum()) for s, name in enumerate(SPLITS)}
    n_pos = arrays["labels"].sum(1)
    meta = {
        "dataset": source.name,
        "title": source.title,
        "note": source.note + (" Implicit feedback: every interaction is a positive, so every exposed "
                               "item is positive." if files.layout.implicit else ""),
        "layout": files.layout.name,
        "layout_description": files.layout.description,
        "files": checks,
        "file_paths": [str(p) for p in files.paths],
        "origin": files.origin,
        "label_rule": label_rule,
        "k_core": k,
        "config": cfg.to_dict(),
        "cache_key": key,
        "protocol_version": PROTOCOL_VERSION,
        "raw_rows": raw_rows,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data),
        "positive_rate": float(data.label.mean()),
        "window_counts": counts,
        "requests": split_counts,
        "dropped_zero_positive": dropped,
        "candidates_per_request": cfg.n_candidates,
        "mean_positives_per_request": {name: float(n_pos[arrays["split"] == s].mean()) if split_counts[name] else None
                                       for s, name in enumerate(SPLITS)},
        "retriever": {
            "auc": models.full.auc, "best_epoch": models.full.best_epoch, "epochs": models.full.epochs,
            "history": models.full.history,
            "fold_auc": [f.auc for f in models.folds], "fold_best_epoch": [f.best_epoch for f in models.folds],
            "seconds": [models.full.seconds] + [f.seconds for f in models.folds],
            "train_rows": int(rows.train.sum()), "holdout_rows": int(rows.holdout.sum()),
            "reused_cached_fits": reused,
        },
        "retriever_auc": models.full.auc,
        "diagnostics": {k_: v for k_, v in diag.items() if k_ != "retriever_order"},
        "retriever_order": diag["retriever_order"],
        "paper_reference": PAPER_REFERENCE.get(source.name),
        "timings": timings,
        "build_seconds": sum(timings.values()),
        "peak_rss_mb": {"main": retriever.peak_rss_mb(), "retriever_worker": worker_peak,
                        "n_jobs": min(n_jobs, cfg.n_folds + 1)},
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                     "pandas": version("pandas")},
    }
    lists = CandidateLists(meta, arrays)
    lists.save(folder)
    lap("save")
    meta["build_seconds"] = sum(timings.values())
    _write_json_atomic(folder / "meta.json", meta)
    return lists, False
