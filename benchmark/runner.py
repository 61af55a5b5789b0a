"""Plan -> skip finished -> one lane per device -> joblib or Dask backend (architecture.md §6).

A lane is a list of runs executed one after another on one device; each lane is one task, so
``--devices cuda:0,cuda:1`` trains on both GPUs at once and ``--devices cpu --n-jobs 2`` runs two
CPU lanes. The backend is switched by configuration only: ``sequential`` (in-process, the
reference path), ``loky`` (local processes through joblib) or ``dask`` (an existing cluster via
``--scheduler``, or a local one: ``dask_cuda.LocalCUDACluster`` for CUDA lanes when dask-cuda is
installed, else ``distributed.LocalCluster``). Every run writes its own record inside the lane, so
a crash of the driver loses nothing, a re-run skips what is finished, and all backends write the
same records (tests/test_backends.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import registry, store
from benchmark.config import RunConfig, resolve_run_config
from benchmark.errors import UserInputError
from benchmark.store import RunSpec

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sequential", "loky", "dask")
SCHEDULER_TIMEOUT_S = 10.0
"""Seconds to wait for a ``--scheduler`` to answer (and for its first worker) before giving up."""
log = logging.getLogger(__name__)


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
    micro_batch: int | None = None
    """Requests per back-propagated slice of a training batch, for methods marked
    ``micro_batchable`` (``trainer.train_steps``); 0 = whole batches; None = ``CPU_MICRO_BATCH``
    on CPU lanes and whole batches on GPUs. An execution setting like the device: not in the config hash."""


CPU_MICRO_BATCH = 256
"""The default slice on CPU: a PRM or DNR batch of 2,048 trains about 1.5x faster in slices of 256
(results/perf.json ``throughput-micro*``), as the activations of a slice stay in cache."""


def micro_batch_for(opts: RunOptions, device: torch.device) -> int:
    if opts.micro_batch is not None:
        return opts.micro_batch
    return CPU_MICRO_BATCH if device.type == "cpu" else 0


def git_commit() -> str | None:
    """HEAD of the checkout (``-dirty`` with uncommitted changes to tracked files). Where the code
    runs from a copy without ``.git`` (rsynced to a GPU node, say), ``DNR_BENCH_GIT_COMMIT`` names
    the commit the copy was made from; it is recorded as given, with ``+copy`` appended."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        head = out.stdout.strip() if out.returncode == 0 else ""
        if head:
            return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    given = os.environ.get("DNR_BENCH_GIT_COMMIT", "").strip()
    return f"{given}+copy" if given else None


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
        # Guarded: a failed run on a GPU this process cannot use must still write its record.
        usable = torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if usable else None,
                   gpu=torch.cuda.get_device_name(device) if usable else None,
                   cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
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


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a plan as ``--plan`` shows it, without training anything."""

    spec: RunSpec
    state: str
    """``finished``; ``resumes`` (a checkpoint of this config exists); ``retry`` (its last attempt
    failed); ``outdated`` (a finished record of another config: it runs again); ``new``."""
    detail: str
    estimate_s: float | None
    """Seconds still to go on one lane like those that trained its finished peers (same dataset,
    method and config, other seeds): their median train + eval time, less what a checkpoint has
    already done. With no finished peer, a resumed run whose checkpoint records its stopping rule
    gets a lower bound instead (``at_least``). None otherwise, and 0 for a finished run."""
    at_least: bool = False
    """``estimate_s`` is a lower bound: the fewest epochs the current stage can still run
    (:func:`benchmark.trainer.min_epochs_left`) at the checkpoint's own seconds per epoch."""


PLAN_STATES = ("finished", "resumes", "retry", "outdated", "new")


def _peer_seconds(results_dir: Path, dataset: str, method: str, digest: str) -> list[float]:
    """Train + eval seconds of every finished seed of (dataset, method) with this config hash."""
    out = []
    for path in sorted((Path(results_dir) / "runs" / dataset / method).glob("seed*.json")):
        spec = RunSpec(dataset, method, int(path.stem.removeprefix("seed")))
        if store.is_finished(results_dir, spec, digest):
            record = store.read_record(results_dir, spec)
            out.append(float(record.get("train_seconds") or 0.0) + float(record.get("eval_seconds") or 0.0))
    return out


def planned_run(spec: RunSpec, opts: RunOptions) -> PlannedRun:
    """What ``plan`` would do with one run, read from the records and checkpoints in
    ``opts.results_dir`` (the same rule as ``plan``: finished = ok record, same config hash)."""
    from benchmark.trainer import checkpoint_progress, min_epochs_left

    digest = resolve_run_config(spec.dataset, spec.method, opts.profile, opts.settings).digest()
    at_least = False
    peers = _peer_seconds(opts.results_dir, spec.dataset, spec.method, digest)
    estimate = float(np.median(peers)) if peers else None
    record = store.read_record(opts.results_dir, spec) or {}
    ckpt = checkpoint_progress(store.checkpoint_path(opts.results_dir, spec))
    if not opts.force and store.is_finished(opts.results_dir, spec, digest):  # plan()'s rule
        test = record.get("headline") or {}
        state, estimate = "finished", 0.0
        trained = f"; best epoch {record.get('best_epoch')} of {record.get('epochs_run')}"
        detail = (str(record.get("finished_utc", ""))[:16] + (trained if record.get("epochs_run") else "")
                  + "".join(f"; test {m} {100 * test[m]:.2f}" for m in test if m.startswith("N@")))
    elif ckpt is not None and "error" in ckpt:
        state, detail = "retry", f"unreadable checkpoint ({ckpt['error']}): it fails once, then starts over"
    elif ckpt is not None and ckpt["tag"] == digest:
        state = "resumes"
        done_s = float(ckpt.get("train_seconds") or 0.0) + float(ckpt.get("eval_seconds") or 0.0)
        detail = (f"after epoch {ckpt['epoch']} of stage {ckpt['stage']} ({ckpt['epochs_run']} epochs, "
                  f"{done_s / 60:.0f} min done); best so far epoch {ckpt['best_epoch']}, "
                  f"{ckpt['stale']} without improvement")
        estimate = None if estimate is None else max(estimate - done_s, 0.0)
        left = min_epochs_left(ckpt)
        if estimate is None and left is not None and ckpt.get("epochs_run"):
            per_epoch = done_s / ckpt["epochs_run"]
            at_least, estimate = True, left * per_epoch
            later = ckpt["stopping"]["stages"] - ckpt["stage"] - 1
            detail += (f"; at least {left} more epoch{'s' * (left != 1)} at {per_epoch:.0f} s"
                       + (f", then {later} more stage{'s' * (later > 1)}" if later > 0 else ""))
    elif record.get("status") == "failed":
        state, detail = "retry", f"last attempt failed: {record.get('error')}"
    elif record.get("status") == "ok":
        state = "outdated"
        detail = ("--force: runs again" if record.get("config_hash") == digest
                  else "its record has another config hash: runs again")
    else:
        state, detail = "new", ""
    if ckpt is not None and "error" not in ckpt and ckpt["tag"] != digest and state != "finished":
        detail = (detail + "; " if detail else "") + "its checkpoint is of another config: starts over"
    return PlannedRun(spec, state, detail, estimate, at_least)


def describe_plan(datasets: list[str], methods: list[str], seeds: list[int], opts: RunOptions) -> list[PlannedRun]:
    """:func:`planned_run` for every run asked for, in ``plan``'s order."""
    return [planned_run(RunSpec(ds, method, seed), opts) for ds in datasets for method in methods for seed in seeds]


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
        micro_batch = micro_batch_for(opts, dev) if model.micro_batchable else 0
        result = fit(model, train, val, test, cfg.train, seed=spec.seed, k=spec_data.k, device=dev,
                     checkpoint=ckpt, checkpoint_tag=digest, progress=opts.progress, micro_batch=micro_batch)
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
            "patience_epochs": cfg.train.patience_epochs(len(train)) if model.trainable else None,
            "micro_batch": micro_batch if micro_batch < cfg.train.batch_size else 0,  # 0: whole batches
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


def lane_eta(remaining: list[RunSpec], opts: RunOptions, per_run: float) -> float:
    """Seconds still to go for ``remaining``: each run's :func:`planned_run` estimate (its
    finished seeds' median, less what its checkpoint has done), or ``per_run`` (this lane's mean
    so far) for a run with no finished seed to go by (at least its checkpoint's lower bound)."""
    total = 0.0
    for spec in remaining:
        try:
            planned = planned_run(spec, opts)
        except Exception:  # noqa: BLE001 - an estimate must never stop a lane
            planned = None
        if planned is None or planned.estimate_s is None:
            total += per_run
        else:
            total += max(planned.estimate_s, per_run) if planned.at_least else planned.estimate_s
    return total


def _line(summary: dict[str, Any], done: int, total: int, elapsed: float, lane: str, eta: float) -> str:
    spec = summary["spec"]
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
        elapsed = time.perf_counter() - started
        eta = lane_eta(specs[i:], opts, elapsed / i)
        print(_line(summary, i, len(specs), elapsed, lane, eta), flush=True)
    return out


def make_lanes(specs: list[RunSpec], devices: list[str], n_jobs: int) -> list[tuple[str, list[RunSpec]]]:
    """One lane per device; CPU-only runs get ``n_jobs`` lanes. Runs are dealt round-robin."""
    if devices == ["cpu"]:
        devices = ["cpu"] * max(1, n_jobs)
    lanes: list[tuple[str, list[RunSpec]]] = [(d, []) for d in devices]
    for i, spec in enumerate(specs):
        lanes[i % len(lanes)][1].append(spec)
    return [lane for lane in lanes if lane[1]]


def _gpu_id(device: str) -> str | None:
    """The id under which ``CUDA_VISIBLE_DEVICES`` names the driver's ``cuda:N`` (None for CPU).

    Without ``CUDA_VISIBLE_DEVICES`` that is ``N`` itself; with it (e.g. ``2,3``) ``cuda:0`` is ``2``.
    Dask workers may see the GPUs in another order (dask-cuda rotates the list so that each
    worker's own GPU comes first), so lanes travel to Dask workers by this id, not by index."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    index = dev.index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(ids):
        raise UserInputError(f"--devices {device}: only {len(ids)} GPU(s) are visible "
                             f"(CUDA_VISIBLE_DEVICES={visible!r})")
    return ids[index]


def _local_device(gpu: str | None) -> str:
    """This process's device string for the GPU with id ``gpu`` (see ``_gpu_id``); ``cpu`` for None."""
    if gpu is None:
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return f"cuda:{gpu}"
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if gpu not in ids:
        raise RuntimeError(f"GPU {gpu} is not visible on Dask worker {socket.gethostname()} "
                           f"(CUDA_VISIBLE_DEVICES={visible!r})")
    return f"cuda:{ids.index(gpu)}"


def _own_gpu() -> str | None:
    """The first GPU id a process sees: a dask-cuda worker's own GPU (run on every worker)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[0].strip() if visible else None


def _dask_lane(specs: list[RunSpec], opts: RunOptions, gpu: str | None, threads: int | None,
               lane: str) -> list[dict[str, Any]]:
    """``run_lane`` on a Dask worker, on the GPU ``gpu`` as this worker numbers it."""
    return run_lane(specs, opts, _local_device(gpu), threads, lane)


def _local_cluster(n_lanes: int, gpus: list[str | None]):
    """A throw-away cluster on this machine (closed with the run): one worker process per lane.

    CUDA lanes get ``dask_cuda.LocalCUDACluster`` (one worker per GPU, each worker's own GPU
    first in its ``CUDA_VISIBLE_DEVICES``) when dask-cuda is installed; CPU lanes, or CUDA lanes
    without dask-cuda, get a ``distributed.LocalCluster`` of single-threaded workers. Runs are whole training
    jobs, not Dask data tasks, so Dask's worker memory limit (which pauses or restarts a worker
    near it) is switched off, and so is the dashboard (its fixed port clashes between clusters)."""
    from distributed import LocalCluster

    common = dict(dashboard_address=None, memory_limit=0)
    cuda = Counter(g for g in gpus if g is not None)
    if cuda:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            log.warning("dask_cuda is not installed: the lanes run on a distributed.LocalCluster whose "
                        "workers all see every GPU; each lane still uses its own --devices GPU")
        else:  # a GPU listed twice in --devices gets two lanes at once: one thread per lane
            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(cuda), threads_per_worker=max(cuda.values()), **common)
    return LocalCluster(n_workers=n_lanes, threads_per_worker=1, processes=True, silence_logs=logging.ERROR,
                        **common)


def _connect(scheduler: str):
    """A client to the cluster at ``scheduler``, or a UserInputError within SCHEDULER_TIMEOUT_S."""
    from distributed import Client

    hint = ("start one with `dask scheduler` and its workers with `dask worker ADDRESS` (or `dask cuda worker "
            "ADDRESS`, one per GPU), or leave out --scheduler to use a local cluster")
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, ValueError, TimeoutError) as exc:
        raise UserInputError(f"cannot reach the Dask scheduler at {scheduler!r} within "
                             f"{SCHEDULER_TIMEOUT_S:.0f} s ({exc}); {hint}") from None
    try:
        client.wait_for_workers(1, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError):
        client.close()
        raise UserInputError(f"the Dask scheduler at {scheduler!r} has no workers after "
                             f"{SCHEDULER_TIMEOUT_S:.0f} s; {hint}") from None
    return client


def _run_dask(lanes: list[tuple[str, list[RunSpec]]], names: list[str], opts: RunOptions, threads: int | None,
              scheduler: str | None) -> list[list[dict[str, Any]]]:
    """Run each lane as one Dask task (``client.submit``) and gather the lanes' summaries in order.

    Lanes are submitted directly rather than through joblib's Dask backend because a CUDA lane
    must be pinned to the worker that owns its GPU (``workers=`` per task), which joblib's
    backend cannot express (its submit options apply to every task alike); a handful of long
    tasks also needs none of its batching. A worker owns a GPU when that GPU comes first in the
    worker's ``CUDA_VISIBLE_DEVICES`` (dask-cuda's layout); lanes whose GPU no worker owns run
    on any worker, and every lane addresses its GPU by id, so it trains on the right one either
    way. A failed run writes its failed record on the worker, as with loky."""
    from distributed import Client

    gpus = [_gpu_id(device) for device, _ in lanes]
    with contextlib.ExitStack() as stack:  # unwinds in reverse: client, cluster, log level
        # Dask logs each worker's start and stop at INFO; the lanes print their own progress. A
        # local cluster's nannies also warn when a worker takes over 4 s to exit (torch's teardown
        # under load) and then end it, which is harmless here: its lane has already returned.
        dask_log = logging.getLogger("distributed")
        stack.callback(dask_log.setLevel, dask_log.level)
        dask_log.setLevel(max(dask_log.level, logging.WARNING if scheduler else logging.ERROR))
        if scheduler:
            client = stack.enter_context(_connect(scheduler))
        else:
            cluster = stack.enter_context(_local_cluster(len(lanes), gpus))
            client = stack.enter_context(Client(cluster))
            client.wait_for_workers(len(cluster.workers))
        owners = client.run(_own_gpu) if any(g is not None for g in gpus) else {}
        futures = []
        for (device, specs), name, gpu in zip(lanes, names, gpus):
            workers = [addr for addr, own in owners.items() if gpu is not None and own == gpu] or None
            futures.append(client.submit(_dask_lane, specs, opts, gpu, threads, name, pure=False,
                                         workers=workers, allow_other_workers=False))
        return client.gather(futures)


def execute(specs: list[RunSpec], opts: RunOptions, devices: list[str], backend: str = "sequential",
            n_jobs: int = 1, scheduler: str | None = None) -> list[dict[str, Any]]:
    """Run ``specs`` in lanes (``make_lanes``) on ``backend``; returns one summary per run, lane by lane.

    ``scheduler`` is a Dask scheduler address (``--backend dask`` only; None starts a local
    cluster). Bad backend choices and an unreachable scheduler raise UserInputError."""
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if scheduler and backend != "dask":
        raise UserInputError(f"--scheduler is a Dask scheduler address; it needs --backend dask, not {backend}")
    lanes = make_lanes(specs, devices, n_jobs)
    if not lanes:
        return []
    cpu_lanes = sum(1 for d, _ in lanes if d == "cpu")
    threads = opts.threads or (max(1, (os.cpu_count() or 1) // cpu_lanes) if cpu_lanes else None)
    names = [f"{d}#{i}" if devices == ["cpu"] else d for i, (d, _) in enumerate(lanes)]
    if backend == "sequential":
        return [s for (d, lane), name in zip(lanes, names) for s in run_lane(lane, opts, d, threads, name)]
    if backend == "loky":
        import joblib

        results = joblib.Parallel(n_jobs=len(lanes), backend="loky")(
            joblib.delayed(run_lane)(lane, opts, d, threads, name) for (d, lane), name in zip(lanes, names))
    else:
        results = _run_dask(lanes, names, opts, threads, scheduler)
    sys.stdout.flush()
    return [s for lane in results for s in lane]
