"""Plan -> skip finished -> one lane per device -> joblib backend (architecture.md §6).

A lane is a list of runs executed one after another on one device; each lane is one joblib
task, so ``--devices cuda:0,cuda:1`` trains on both GPUs at once and ``--devices cpu --n-jobs 2``
runs two CPU lanes. The backend is switched by configuration only: ``sequential`` (in-process,
the reference path), ``loky`` (local processes) or ``dask`` (an existing cluster via
``--scheduler``, or a local one). Every run writes its own record, so a crash of the driver
loses nothing, and a re-run skips what is finished.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import registry, store
from benchmark.config import RunConfig, resolve_run_config
from benchmark.store import RunSpec

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sequential", "loky", "dask")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    results_dir: Path
    profile: str = "paper"
    settings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    data_dir: str | None = None
    cache_dir: str | None = None
    download: bool = True
    force: bool = False
    progress: bool = False
    threads: int | None = None
    """torch threads per lane (None: CPU count divided by the number of CPU lanes)."""


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
           "torch": torch.__version__, "numpy": np.__version__, "pandas": ver("pandas"), "scipy": ver("scipy"),
           "recbole": ver("recbole"), "device": str(device), "torch_threads": torch.get_num_threads(),
           "git_commit": git_commit()}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(device))
    return env


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def plan(datasets: list[str], methods: list[str], seeds: list[int], opts: RunOptions) -> tuple[list[RunSpec], list[RunSpec]]:
    """All runs asked for, and those still to do (not finished with the same config)."""
    todo, done = [], []
    for ds in datasets:
        for method in methods:
            cfg = resolve_run_config(ds, method, opts.profile, opts.settings)
            digest = cfg.digest()
            for seed in seeds:
                spec = RunSpec(ds, method, seed)
                finished = not opts.force and store.is_finished(opts.results_dir, spec, digest)
                (done if finished else todo).append(spec)
    return todo, done


def run_one(spec: RunSpec, opts: RunOptions, device: str = "cpu") -> dict[str, Any]:
    """Train and evaluate one run and write its record (ok or failed). Returns a summary."""
    from benchmark.batches import SplitTensors, data_spec
    from benchmark.data import build_candidate_lists
    from benchmark.trainer import fit, peak_memory_mb, seed_everything

    started = time.perf_counter()
    started_utc = _now()
    dev = torch.device(device)
    cfg: RunConfig = resolve_run_config(spec.dataset, spec.method, opts.profile, opts.settings)
    digest = cfg.digest()
    ckpt = store.checkpoint_path(opts.results_dir, spec)
    entry = registry.get(spec.method)
    base = {"config": cfg.to_dict(), "config_hash": digest, "family": entry.family, "started_utc": started_utc}
    try:
        lists, _ = build_candidate_lists(spec.dataset, data_dir=opts.data_dir, cache_dir=opts.cache_dir,
                                         overrides=cfg.data.to_dict(), download=opts.download, progress=False)
        spec_data = data_spec(lists)
        train = SplitTensors.of(lists, "train", limit=cfg.train.max_train_requests)
        val, test = SplitTensors.of(lists, "val"), SplitTensors.of(lists, "test")
        seed_everything(spec.seed, cfg.train.deterministic)
        model = registry.build(spec.method, spec_data, **cfg.model).to(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        result = fit(model, train, val, test, cfg.train, seed=spec.seed, k=spec_data.k, device=dev,
                     checkpoint=ckpt, checkpoint_tag=digest, progress=opts.progress)
        k = spec_data.k
        record = {
            **base, "status": "ok", "error": None,
            "data": {"cache_key": lists.meta["cache_key"], "title": lists.meta["title"], "note": lists.meta["note"],
                     "label_rule": lists.meta["label_rule"], "k_core": lists.meta["k_core"],
                     "requests": lists.meta["requests"], "train_requests_used": len(train)},
            "uses_retriever_score": bool(getattr(model, "uses_retriever_score", False)),
            "rank_derived_auc": bool(getattr(model, "rank_derived_auc", False)),
            "metrics": {"val": result.val, "test": result.test},
            "headline": {m: result.test[m] for m in (f"H@{k}", f"N@{k}", f"M@{k}", f"F1@{k}", "AUC")},
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "resumed_from_epoch": result.resumed_from_epoch, "history": result.history,
            "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
            "seconds_per_epoch": result.seconds_per_epoch, "peak_memory_mb": peak_memory_mb(dev),
            "n_params": sum(p.numel() for p in model.parameters()),
            "environment": environment(dev), "finished_utc": _now(),
        }
        per_request = {"request_id": test.request_id.numpy(), **result.test_per_request}
        store.write_record(opts.results_dir, spec, record, per_request)
        ckpt.unlink(missing_ok=True)
        return {"spec": spec, "status": "ok", "seconds": time.perf_counter() - started, "headline": record["headline"]}
    except Exception as exc:  # recorded, and retried on the next invocation
        error = f"{type(exc).__name__}: {exc}"
        store.write_record(opts.results_dir, spec, {
            **base, "status": "failed", "error": error, "traceback": traceback.format_exc()[-4000:],
            "environment": environment(dev), "finished_utc": _now()})
        ckpt.unlink(missing_ok=True)
        return {"spec": spec, "status": "failed", "seconds": time.perf_counter() - started, "error": error}


def _line(summary: dict[str, Any], done: int, total: int, elapsed: float, lane: str) -> str:
    spec = summary["spec"]
    eta = elapsed / done * (total - done) if done else 0.0
    tail = (" ".join(f"{m}={100 * v:.2f}" for m, v in summary["headline"].items())
            if summary["status"] == "ok" else summary["error"])
    return (f"[{lane}] {done}/{total} {spec.name}: {summary['status']} in {summary['seconds']:.1f}s | "
            f"elapsed {elapsed:.0f}s, lane ETA {eta:.0f}s | {tail}")


def run_lane(specs: list[RunSpec], opts: RunOptions, device: str, threads: int | None, lane: str) -> list[dict[str, Any]]:
    """Run ``specs`` one after another on ``device``; print one line per finished run."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    out = []
    for i, spec in enumerate(specs, 1):
        summary = run_one(spec, opts, device)
        out.append(summary)
        print(_line(summary, i, len(specs), time.perf_counter() - started, lane), flush=True)
    return out


def make_lanes(specs: list[RunSpec], devices: list[str], n_jobs: int) -> list[tuple[str, list[RunSpec]]]:
    """One lane per device; CPU-only runs get ``n_jobs`` lanes. Runs are dealt round-robin."""
    if devices == ["cpu"]:
        devices = ["cpu"] * max(1, n_jobs)
    lanes: list[tuple[str, list[RunSpec]]] = [(d, []) for d in devices]
    for i, spec in enumerate(specs):
        lanes[i % len(lanes)][1].append(spec)
    return [lane for lane in lanes if lane[1]]


def execute(specs: list[RunSpec], opts: RunOptions, devices: list[str], backend: str = "sequential",
            n_jobs: int = 1, scheduler: str | None = None) -> list[dict[str, Any]]:
    lanes = make_lanes(specs, devices, n_jobs)
    if not lanes:
        return []
    cpu_lanes = sum(1 for d, _ in lanes if d == "cpu")
    threads = opts.threads or (max(1, (os.cpu_count() or 1) // cpu_lanes) if cpu_lanes else None)
    names = [f"{d}#{i}" if devices == ["cpu"] else d for i, (d, _) in enumerate(lanes)]
    if backend == "sequential":
        return [s for (d, lane), name in zip(lanes, names) for s in run_lane(lane, opts, d, threads, name)]
    import joblib

    jobs = [joblib.delayed(run_lane)(lane, opts, d, threads, name) for (d, lane), name in zip(lanes, names)]
    if backend == "loky":
        results = joblib.Parallel(n_jobs=len(lanes), backend="loky")(jobs)
    elif backend == "dask":
        from distributed import Client, LocalCluster

        client = Client(scheduler) if scheduler else Client(LocalCluster(n_workers=len(lanes), threads_per_worker=1,
                                                                          processes=True))
        try:
            with joblib.parallel_config(backend="dask"):
                results = joblib.Parallel(n_jobs=len(lanes))(jobs)
        finally:
            client.close()
    else:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    sys.stdout.flush()
    return [s for lane in results for s in lane]
