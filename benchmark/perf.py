"""``python -m benchmark.perf``: measured speed and memory of the suite, written to a JSON file.

Section ``data``: for each dataset, a build from the raw files into a fresh cache (retriever
training and cross-fitting included) and a load of the cached lists, each in its own process,
with the stage timings and peak memory the build records. Targets (issue "data foundation"):
ml-100k <= 30 s, the KuaiRand window and the Amazon sample <= 120 s, ML-1M <= 600 s, peak
memory <= 4 GB, loading cached lists <= 2 s.

Section ``recbole`` (issue "sequential baselines"): RecBole's own SASRec training (its Config,
data pipeline and Trainer, on its bundled ml-100k) against our ``sasrec`` (the same RecBole
module) trained by our harness on our ml-100k candidate lists, side by side in one process with
the same hyper-parameters, batch size, optimiser and number of epochs. Target: our harness is not
slower than RecBole's trainer for the same model, in sequences encoded per second (see
``RECBOLE_NOTE``). The RecBole side lives in :func:`baselines.recbole_adapter.recbole_sasrec_throughput`
(the one module that imports RecBole).

Section ``epochs`` (issues "baselines I/II", "harness"): training seconds per epoch of each method
relative to PRM, every batch stepped by each method in turn, each training phase timed on its own
(:func:`measure_epochs`), and inference milliseconds per request. ``--label`` names the JSON key,
so that measurements of different method sets sit side by side.

Section ``scaling`` (issue "performance"): per dataset, two builds into fresh caches, each in its
own process: half of the raw data's users (``data.max_users``, a seeded subset taken before the
k-core filter) and all of them, with seconds, peak memory, requests built and the all/half ratios
(:func:`measure_scaling`), so that a reader sees whether the build grows linearly.

Section ``throughput`` (issue "performance"): training and inference requests per second of
``--methods`` (default PRM and DNR-B) on each of ``--devices`` (CPU, and a GPU when one is lent),
with the trainer's own step function (:func:`measure_throughput`).

Section ``suite`` (issue "performance"): wall time of ``python -m benchmark --methods all`` on
ml-100k with ``--n-jobs 1`` (sequential backend) against ``--backend loky --n-jobs 2``, on a warm
list cache, and the speed-up ratio (:func:`measure_suite`).

Sections write under their own key (``--label``, default the section's name for the new ones);
results are merged into ``--output``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmark.errors import BenchmarkError, UserInputError
from benchmark.interrupt import report as report_interrupt, run_child, sigterm_as_interrupt

if TYPE_CHECKING:
    import torch

TARGET_SECONDS = {"ml-100k": 30, "ml-1m": 600, "kuairand": 120, "amazon-books": 120}
TARGET_PEAK_MB = 4096
TARGET_LOAD_SECONDS = 2.0


def _run_data_command(dataset: str, data_dir: str | None, cache: Path, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "benchmark.data", "--dataset", dataset, "--cache-dir", str(cache), "--json",
           "--quiet", *extra]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    started = time.perf_counter()
    proc = run_child(cmd)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout), wall


def measure_data(dataset: str, data_dir: str | None, settings: list[str]) -> dict[str, Any]:
    extra = [arg for s in settings for arg in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="dnr-perf-") as tmp:
        cache = Path(tmp)
        built, build_wall = _run_data_command(dataset, data_dir, cache, extra)
        loaded, load_wall = _run_data_command(dataset, data_dir, cache, extra)
    assert not built["cached"] and loaded["cached"], "the second run must hit the cache"
    peak = built["peak_rss_mb"]
    peak_total = _peak_upper_bound(peak)
    return {
        "dataset": dataset,
        "settings": settings,
        "interactions": built["interactions"],
        "users": built["users"],
        "requests": sum(built["requests"].values()),
        "build_seconds": built["build_seconds"],
        "build_wall_seconds": build_wall,
        "stage_seconds": built["timings"],
        "peak_rss_mb": peak,
        "peak_rss_mb_upper_bound": peak_total,
        "load_seconds": loaded["load_seconds"],
        "load_wall_seconds": load_wall,
        "targets": {"build_seconds": TARGET_SECONDS.get(dataset), "peak_rss_mb": TARGET_PEAK_MB,
                    "load_seconds": TARGET_LOAD_SECONDS},
        "within_targets": {
            "build": TARGET_SECONDS.get(dataset) is None or built["build_seconds"] <= TARGET_SECONDS[dataset],
            "memory": peak_total <= TARGET_PEAK_MB,
            "load": loaded["load_seconds"] <= TARGET_LOAD_SECONDS,
        },
    }


def _peak_upper_bound(peak: dict[str, float]) -> float:
    """An upper bound on a build's memory: the main process's peak plus each concurrent
    retriever worker at the largest worker peak (workers run ``n_jobs`` at a time)."""
    return peak["main"] + peak["retriever_worker"] * peak["n_jobs"]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None where the denominator is missing or not positive
    (a stage that took no measurable time has no growth factor)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def raw_user_count(dataset: str, data_dir: str | None, settings: list[str] = ()) -> int:
    """Users in the raw data of ``dataset``: the population ``data.max_users`` samples from
    (deduplication keeps every user, and the subset is drawn before the k-core filter, see
    :func:`benchmark.data.protocol.subsample_users`). Reads the raw files once, in this process,
    with the label rule the settings resolve to (a label rule never drops a row)."""
    from benchmark.config import load_data_config, parse_set_options
    from benchmark.data import sources

    source = sources.get_source(dataset)
    cfg = load_data_config(source.name, parse_set_options(list(settings)).get("data"))
    frame, _ = sources.load_interactions(sources.resolve_files(source.name, data_dir), cfg.label)
    return int(frame["user"].nunique())


def _raw_user_count_in_child(dataset: str, data_dir: str | None, settings: list[str]) -> int:
    """:func:`raw_user_count` in a child process. Linux carries a process's peak RSS
    (``ru_maxrss``, what the builds report) across fork and exec, so every build this process
    starts would report at least this process's own peak; reading a large raw file here would
    raise that floor."""
    code = ("import json, sys\n"
            "from benchmark.errors import BenchmarkError\n"
            "from benchmark.perf import raw_user_count\n"
            "try:\n"
            "    print(raw_user_count(*json.loads(sys.argv[1])))\n"
            "except BenchmarkError as exc:\n"
            "    sys.exit(f'error: {exc}')\n")
    proc = run_child([sys.executable, "-c", code, json.dumps([dataset, data_dir, list(settings)])])
    if proc.returncode != 0:
        raise RuntimeError(f"counting the raw users of {dataset} failed: {proc.stderr.strip()[-500:]}")
    return int(proc.stdout.strip())


def _own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def scaling_user_counts(raw_users: int, max_users: int | None) -> tuple[int, int]:
    """``(all, half)``: all = the users a build starts from (the raw users, or ``data.max_users``
    when the settings cap them lower), half = half of that, rounded down."""
    full = raw_users if max_users is None else min(raw_users, max_users)
    if full < 2:
        raise UserInputError(f"the scaling section needs at least 2 users to halve, got {full}")
    return full, full // 2


def import_baseline_rss_mb() -> float:
    """Peak resident memory (MiB) of a fresh interpreter that imported what a list build imports
    (torch, pandas, the data modules) and did nothing else: the floor under every build's
    main-process peak, so that growth can be read above it."""
    code = ("import resource, pandas, torch, benchmark.data.lists, benchmark.data.retriever, "
            "benchmark.data.candidates; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)")
    # measured as the builds measure themselves (ru_maxrss), so it carries the same inherited floor
    proc = run_child([sys.executable, "-c", code])
    if proc.returncode != 0:
        raise RuntimeError(f"measuring the import baseline failed: {proc.stderr.strip()[-500:]}")
    return float(proc.stdout.strip())


def _build_once(dataset: str, data_dir: str | None, settings: list[str],
                jobs: int | None = None) -> dict[str, Any]:
    """One list build into a fresh cache, in its own process (nothing reused: raw file read,
    retriever fits and candidates all happen); ``jobs``: processes for the retriever fits (None:
    the data command's default, the CPU count)."""
    extra = [arg for s in settings for arg in ("--set", s)] + (["--jobs", str(jobs)] if jobs else [])
    with tempfile.TemporaryDirectory(prefix="dnr-perf-") as tmp:
        built, wall = _run_data_command(dataset, data_dir, Path(tmp), extra)
    if built["cached"]:
        raise RuntimeError("a build into a fresh cache reported cached lists")
    peak = built["peak_rss_mb"]
    return {"settings": settings, "users": built["users"], "items": built["items"],
            "interactions": built["interactions"], "requests": sum(built["requests"].values()),
            "build_seconds": built["build_seconds"], "build_wall_seconds": wall,
            "stage_seconds": built["timings"], "peak_rss_mb": peak,
            "peak_rss_mb_upper_bound": _peak_upper_bound(peak)}


def growth_ratios(half: dict[str, Any], full: dict[str, Any], baseline_mb: float | None = None) -> dict[str, Any]:
    """All-users over half-users ratios of two :func:`_build_once` results. Linear growth shows
    as a seconds (or memory) ratio close to the requests ratio: ``seconds_ratio_over_requests_ratio``
    is about 1 for linear growth, below 1 for sub-linear. The main-process peak includes the
    interpreter and its imports, so its growth is also given above ``baseline_mb``."""
    out: dict[str, Any] = {key: _ratio(full[key], half[key])
                           for key in ("users", "interactions", "requests", "build_seconds", "build_wall_seconds",
                                       "peak_rss_mb_upper_bound")}
    out["peak_rss_mb_main"] = _ratio(full["peak_rss_mb"]["main"], half["peak_rss_mb"]["main"])
    if baseline_mb is not None:
        out["peak_rss_mb_main_above_baseline"] = _ratio(full["peak_rss_mb"]["main"] - baseline_mb,
                                                        half["peak_rss_mb"]["main"] - baseline_mb)
    out["stage_seconds"] = {k: _ratio(full["stage_seconds"][k], half["stage_seconds"].get(k))
                            for k in full["stage_seconds"]}
    out["seconds_ratio_over_requests_ratio"] = _ratio(out["build_seconds"], out["requests"])
    return out


def measure_scaling(dataset: str, data_dir: str | None, settings: list[str],
                    jobs: int | None = None) -> dict[str, Any]:
    """Data build seconds and peak memory with half and with all of ``dataset``'s users, and how
    they grow (all / half). Each build runs in its own process into a fresh cache; the half build
    adds ``data.max_users=<half>`` to ``settings`` (a seeded random subset of users, drawn before
    the k-core filter, so the requests built shrink by about, not exactly, half). ``jobs``: processes
    for the retriever fits (default: the CPU count, as a user's build).

    Peaks are ``ru_maxrss`` high-water marks, which Linux carries across fork and exec: a build
    reports at least the peak of the process that started it (``spawning_process_peak_rss_mb``,
    kept small here: the raw users are counted in a child), and each retriever worker at least the
    build's RSS when loky started it, so ``peak_rss_mb_upper_bound`` is a loose bound."""
    from benchmark.config import load_data_config, parse_set_options
    from benchmark.data import sources

    name = sources.get_source(dataset).name
    cfg = load_data_config(name, parse_set_options(list(settings)).get("data"))
    raw = _raw_user_count_in_child(name, data_dir, settings)
    full_users, half_users = scaling_user_counts(raw, cfg.max_users)
    baseline = import_baseline_rss_mb()
    floor = _own_peak_rss_mb()
    print(f"scaling: {name} half ({half_users} of {full_users} users) ...", file=sys.stderr, flush=True)
    half_settings = [*settings, f"data.max_users={half_users}"]
    half = {"max_users": half_users, **_build_once(name, data_dir, half_settings, jobs)}
    print(f"scaling: {name} all ({full_users} users) ...", file=sys.stderr, flush=True)
    full = {"max_users": full_users, **_build_once(name, data_dir, list(settings), jobs)}
    return {"dataset": name, "settings": list(settings), "raw_users": raw,
            "retriever_jobs": jobs or os.cpu_count(), "import_baseline_rss_mb": baseline,
            "spawning_process_peak_rss_mb": floor, "half": half, "all": full,
            "ratio_all_over_half": growth_ratios(half, full, baseline),
            "load_average_1_5_15_after": os.getloadavg()}


RECBOLE_NOTE = (
    "Both sides train the very same model, RecBole's SASRec module (2 layers, 2 heads, hidden 128, FFN 256, "
    "history padded to 50), with the same Adam lr, weight decay, grad-clip, dropout and batch size, for the same "
    "number of epochs, timed over the training epochs only (no evaluation). Their data and loss differ by design: "
    "RecBole trains next-item prediction, one training instance per prefix of each user's sequence (one target, "
    "softmax CE over all items); our harness trains one instance per request (its history, 50 candidates with "
    "labels, pointwise BCE). The comparable unit is therefore the sequence: one padded history encoded by the "
    "transformer, forward and backward, which is where nearly all the compute goes in both (the CE over ~1.7k items "
    "and the 50 candidate dot products are small next to it). 'sequences_per_second' is that unit on both sides; "
    "'labelled_targets_per_second' counts supervised (sequence, item) pairs (1 per RecBole instance, 50 per "
    "request). The verdict compares sequences per second; our side runs once before and once after RecBole's "
    "(their mean is compared) so that a drift in the machine's load does not favour one side."
)


def measure_recbole(epochs: int, batch_size: int | None, data_dir: str | None, seed: int = 0,
                    warmup_epochs: int = 1) -> dict[str, Any]:
    """RecBole's SASRec pipeline vs our ``sasrec`` through :func:`benchmark.trainer.fit`, same settings.

    Each side first trains ``warmup_epochs`` untimed epochs (the first batches of a process pay
    for allocator growth and kernel selection: about 8 s of our 7-batch ml-100k epoch, which
    would otherwise count against the side with fewer batches per epoch)."""
    import dataclasses

    import torch

    from baselines.recbole_adapter import recbole_sasrec_throughput
    from benchmark import registry
    from benchmark.batches import SplitTensors, data_spec
    from benchmark.config import resolve_run_config
    from benchmark.data import build_candidate_lists
    from benchmark.trainer import fit, seed_everything

    cfg = resolve_run_config("ml-100k", "sasrec")
    train_cfg = dataclasses.replace(cfg.train, max_epochs=warmup_epochs + epochs, patience=warmup_epochs + epochs + 1,
                                    batch_size=batch_size or cfg.train.batch_size)
    hp = cfg.model
    lists, _ = build_candidate_lists("ml-100k", data_dir=data_dir, overrides=cfg.data.to_dict(), progress=False)
    spec = data_spec(lists)
    shared = {"epochs": epochs, "batch_size": train_cfg.batch_size, "hidden_size": hp["hidden"],
              "n_layers": hp["n_layers"], "n_heads": hp["n_heads"], "inner_size": hp["inner_size"],
              "dropout": hp["dropout"], "max_len": spec.history_len, "lr": train_cfg.lr,
              "weight_decay": train_cfg.weight_decay, "grad_clip": train_cfg.grad_clip}
    if hp["attn_dropout"] is not None or hp["hidden_act"] != "gelu":
        raise ValueError("the RecBole side is configured for attn_dropout = dropout and GELU only")

    def ours_run(label: str) -> dict[str, Any]:
        print(f"recbole: our sasrec through benchmark.trainer.fit, {epochs} epoch(s), {label} ...",
              file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        train = SplitTensors.of(lists, "train")
        val, test = SplitTensors.of(lists, "val"), SplitTensors.of(lists, "test")
        seed_everything(seed, train_cfg.deterministic)
        model = registry.build("sasrec", spec, **hp)
        result = fit(model, train, val, test, train_cfg, seed=seed, k=spec.k)
        epoch_seconds = [h["seconds"] for h in result.history][warmup_epochs:]
        return {"when": label, "warmup_epoch_seconds": [h["seconds"] for h in result.history][:warmup_epochs],
                "epoch_seconds": epoch_seconds, "eval_seconds_total": result.eval_seconds,
                "sequences_per_second": len(train) * epochs / sum(epoch_seconds),
                "load_average_1_5_15_before_after": [load_before, os.getloadavg()],
                "n_params": sum(p.numel() for p in model.parameters())}

    # ours before and after RecBole: the machine's load drifts, so RecBole's run is bracketed
    before = ours_run("before RecBole")
    print(f"recbole: RecBole's own SASRec pipeline, {epochs} epoch(s) ...", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    theirs = recbole_sasrec_throughput(**shared, seed=seed, warmup_epochs=warmup_epochs)
    theirs["load_average_1_5_15_before_after"] = [load_before, os.getloadavg()]
    theirs["labelled_targets_per_second"] = theirs["sequences_per_second"]
    after = ours_run("after RecBole")

    n_req = len(lists.split("train")["user"])
    runs = [before, after]
    seconds = sum(sum(r["epoch_seconds"]) for r in runs)
    ours = {
        "pipeline": "benchmark.trainer.fit on our cached ml-100k candidate lists (the suite's sasrec)",
        "data": f"our ml-100k candidate lists (k-core {lists.meta['k_core']}, label {lists.meta['label_rule']}, "
                f"fill {cfg.data.fill}), train split",
        "users": spec.n_users, "items": spec.n_items, "train_requests": n_req,
        "batches_per_epoch": -(-n_req // train_cfg.batch_size), "n_params": before["n_params"],
        "runs": runs,
        "sequences_per_second": n_req * epochs * len(runs) / seconds,
        "labelled_targets_per_second": n_req * spec.list_len * epochs * len(runs) / seconds,
    }
    ratio = ours["sequences_per_second"] / theirs["sequences_per_second"]
    return {
        "settings": {**shared, "warmup_epochs": warmup_epochs, "seed": seed, "torch_threads": torch.get_num_threads(), "device": "cpu"},
        "recbole": theirs, "ours": ours, "note": RECBOLE_NOTE,
        "ours_over_recbole_sequences_per_second": ratio,
        "ours_over_recbole_each_run": [r["sequences_per_second"] / theirs["sequences_per_second"] for r in runs],
        "within_target": ratio >= 1.0,
        "machine": machine(), "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _phases(model) -> list[tuple[str, int, int]]:
    """``(label suffix, stage index, first epoch)`` of every training phase of a method: each
    stage, and inside a stage the first epoch where all its steps are active when some start
    later (DNR's generator after T). Read from ``stages()`` and ``Step.active``, never from names."""
    out = []
    for s_index, stage in enumerate(model.stages()):
        suffix = f":{stage.name}" if len(model.stages()) > 1 else ""
        out.append((suffix, s_index, 1))
        if not all(step.active(1) for step in stage.steps):
            later = next((e for e in range(2, 10_000) if all(step.active(e) for step in stage.steps)), None)
            if later is not None:
                out.append((f"{suffix}@epoch>={later}", s_index, later))
    return out


def _setup(dataset: str, methods: list[str], data_dir: str | None, settings: list[str],
           inference_requests: int | None):
    """The resolved configs of ``methods`` (profile ``paper`` plus ``settings``), the lists'
    spec, the train split (``train.max_train_requests`` applied) and the first
    ``inference_requests`` test requests. Data and train settings do not depend on the method,
    so the first method's are used for all."""
    from benchmark.batches import SplitTensors, data_spec
    from benchmark.config import parse_set_options, resolve_run_config
    from benchmark.data import build_candidate_lists

    overrides = parse_set_options(settings)
    configs = {m: resolve_run_config(dataset, m, "paper", overrides) for m in methods}
    data_cfg, train_cfg = configs[methods[0]].data, configs[methods[0]].train
    lists, _ = build_candidate_lists(dataset, data_dir=data_dir, overrides=data_cfg.to_dict(), progress=False)
    spec = data_spec(lists)
    train = SplitTensors.of(lists, "train", limit=train_cfg.max_train_requests)
    test = SplitTensors.of(lists, "test", limit=inference_requests)
    return configs, train_cfg, spec, train, test


def _phase_units(method: str, spec, cfg, seed: int, device: "torch.device | str" = "cpu") -> dict[str, dict[str, Any]]:
    """One freshly built, seeded instance of ``method`` per training phase (:func:`_phases`), on
    ``device``, set up as the trainer sets up that phase: the stage's ``on_start`` run, one Adam
    per step over that step's parameters. Keys are ``slug`` + the phase's suffix."""
    import torch

    from benchmark import registry
    from benchmark.trainer import seed_everything

    units: dict[str, dict[str, Any]] = {}
    seed_everything(seed, cfg.train.deterministic)
    for suffix, s_index, first in _phases(registry.build(method, spec, **cfg.model)):
        seed_everything(seed, cfg.train.deterministic)
        model = registry.build(method, spec, **cfg.model).to(device).train()
        stage = model.stages()[s_index]
        if stage.on_start is not None:
            stage.on_start()
        units[method + suffix] = {
            "method": method, "model": model, "steps": stage.steps, "stage": s_index, "offset": first - 1,
            "optims": [torch.optim.Adam(list(step.parameters()), lr=step.lr or cfg.train.lr,
                                        weight_decay=cfg.train.weight_decay) for step in stage.steps]}
    return units


def _sync(device: "torch.device") -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a timer read without this
    would stop before the work is done)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inference_seconds(model, test, batch_size: int, device: "torch.device") -> float:
    """Seconds to score ``test`` with the trainer's :func:`~benchmark.trainer.predict` (eval mode,
    no gradients, batches moved to ``device``, scores back on the CPU, which also waits for the
    device), after one untimed batch of 64 (first-call allocations are not a per-request cost)."""
    import torch

    from benchmark.trainer import predict

    model.eval()
    with torch.no_grad():
        warm = next(iter(test.batches(64, device=device)), None)
        if warm is not None:
            model.score(warm)
    _sync(device)
    tick = time.perf_counter()
    predict(model, test, batch_size, device)
    return time.perf_counter() - tick


def measure_epochs(dataset: str, methods: list[str], epochs: int, data_dir: str | None, settings: list[str],
                   threads: int = 1, seed: int = 0, inference_requests: int = 2048,
                   micro_batch: int = 0) -> dict[str, Any]:
    """Training seconds per epoch of each method relative to PRM, stepped in turn on every batch,
    and inference milliseconds per request.

    Every train batch is given to each method in turn (the first method rotates with the epoch),
    so drifts in the machine's load hit all methods alike; only the optimiser steps are timed
    (all active steps, as the trainer runs them: loss, backward, clipping, Adam). A method with
    several phases (EGRerank's evaluator and generator stages; DNR before and after its switch
    epoch T) is timed once per phase, as ``slug:stage`` / ``slug@epoch>=N`` entries, each on its
    own instance. The first epoch is a warm-up; the rest are averaged. Inference: the test split's
    first ``inference_requests`` scored in eval mode at the run's eval batch size
    (:func:`_inference_seconds`), after the timed epochs (the last phase's instance), in ms per request.
    """
    import torch

    from benchmark.trainer import epoch_order, train_steps

    torch.set_num_threads(threads)
    if "prm" not in methods:
        methods = ["prm", *methods]
    configs, train_cfg, spec, train, test = _setup(dataset, methods, data_dir, settings, inference_requests)
    units: dict[str, dict[str, Any]] = {}
    for m in methods:
        units.update(_phase_units(m, spec, configs[m], seed))
    names = list(units)
    seconds = {u: [] for u in names}
    for epoch in range(1, epochs + 2):
        spent = dict.fromkeys(names, 0.0)
        for u in names:
            units[u]["model"].epoch_begin(epoch + units[u]["offset"])
        for batch in train.batches(train_cfg.batch_size, epoch_order(len(train), seed, 0, epoch)):
            for i in range(len(names)):
                u = units[names[(i + epoch) % len(names)]]
                tick = time.perf_counter()
                train_steps(u["model"], u["steps"], u["optims"], batch, epoch + u["offset"], train_cfg.grad_clip,
                            micro_batch=micro_batch)
                spent[names[(i + epoch) % len(names)]] += time.perf_counter() - tick
        print(f"epochs: epoch {epoch} " + ", ".join(f"{u} {v:.1f}s" for u, v in spent.items()),
              file=sys.stderr, flush=True)
        if epoch > 1:  # epoch 1 is the warm-up
            for u in names:
                seconds[u].append(spent[u])
    last = {units[u]["method"]: u for u in names}  # each method's last phase
    cpu = torch.device("cpu")
    inference = {u: _inference_seconds(units[u]["model"], test, train_cfg.eval_batch_size, cpu) * 1000
                 / max(len(test), 1) for u in last.values()}
    prm = sum(seconds["prm"]) / len(seconds["prm"])
    return {
        "dataset": dataset, "train_requests": len(train), "batch_size": train_cfg.batch_size,
        "micro_batch": micro_batch, "timed_epochs": epochs, "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "inference_requests": len(test), "eval_batch_size": train_cfg.eval_batch_size,
        "load_average_1_5_15_after": os.getloadavg(),
        "methods": {u: {"seconds_per_epoch": sum(v) / len(v), "ratio_to_prm": sum(v) / len(v) / prm,
                        "params": sum(p.numel() for p in units[u]["model"].parameters()),
                        **({"inference_ms_per_request": inference[u]} if u in inference else {})}
                    for u, v in seconds.items()},
    }


def check_devices(devices: list[str]) -> list["torch.device"]:
    """``devices`` as torch devices; a name that is not ``cpu``, ``cuda`` or ``cuda:N``, or a CUDA
    device this machine does not have, is a :class:`UserInputError` naming it. The index is read
    from the name here (``torch.device`` wraps large indices around: ``cuda:999`` becomes ``cuda:-25``)."""
    import re

    import torch

    out = []
    for name in devices:
        match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", name.strip())
        if match is None or (match[1] == "cpu" and match[2] is not None):
            raise UserInputError(f"--devices: {name!r} is not a supported device (use cpu, cuda or cuda:N)")
        if match[1] == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(match[2] or 0)
            if index >= count:
                raise UserInputError(f"--devices: {name} asked for, but PyTorch sees {count} CUDA device(s) here")
            out.append(torch.device("cuda", index))
        else:
            out.append(torch.device("cpu"))
    if not out:
        raise UserInputError("--devices: no device given")
    return out


def device_name(device: "torch.device") -> str:
    """The GPU's name for a CUDA device, the processor's model name for the CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _train_throughput(unit: dict[str, Any], train, train_cfg, seed: int, device: "torch.device", epochs: int,
                      batches: int | None, warmup_epochs: int, micro_batch: int = 0) -> tuple[int, int, float]:
    """Train one phase unit as the trainer does (batches in the trainer's epoch order moved to
    ``device``, every active step through :func:`~benchmark.trainer.train_steps`), first
    ``warmup_epochs`` untimed epochs, then ``epochs`` timed epochs, or exactly ``batches`` timed
    batches when given (continuing into further epochs as needed). The device is synchronised
    before the clock starts and before it stops. Returns (requests, batches, seconds) timed."""
    from benchmark.trainer import epoch_order, train_steps

    model, offset = unit["model"].train(), unit["offset"]

    def run_epoch(epoch: int, limit: int | None) -> tuple[int, int]:
        model.epoch_begin(epoch + offset)
        requests = count = 0
        order = epoch_order(len(train), seed, unit["stage"], epoch)
        for batch in train.batches(train_cfg.batch_size, order, device):
            train_steps(model, unit["steps"], unit["optims"], batch, epoch + offset, train_cfg.grad_clip,
                        micro_batch=micro_batch)
            requests, count = requests + batch.user.shape[0], count + 1
            if limit is not None and count >= limit:
                break  # before the next batch is cut and moved to the device
        return requests, count

    for epoch in range(1, warmup_epochs + 1):
        run_epoch(epoch, None)
    _sync(device)
    tick = time.perf_counter()
    epoch, requests, done = warmup_epochs, 0, 0
    while (done < batches) if batches is not None else (epoch < warmup_epochs + epochs):
        epoch += 1
        r, c = run_epoch(epoch, None if batches is None else batches - done)
        requests, done = requests + r, done + c
    _sync(device)
    return requests, done, time.perf_counter() - tick


def measure_throughput(dataset: str, methods: list[str], devices: list[str], epochs: int = 2,
                       data_dir: str | None = None, settings: list[str] = (), threads: int = 1, seed: int = 0,
                       batches: int | None = None, warmup_epochs: int = 1,
                       inference_requests: int | None = None, micro_batch: int = 0) -> dict[str, dict[str, Any]]:
    """Training and inference throughput (requests per second) of ``methods`` on each device.

    Per device and method, every training phase (:func:`_phases`: DNR before and after its switch
    epoch are separate entries) is trained on its own fresh instance by :func:`_train_throughput`;
    training requests/s = train requests processed / seconds of optimiser steps (no evaluation).
    Inference requests/s: the test split (its first ``inference_requests``, default all) scored by
    the method's last phase instance after its training (:func:`_inference_seconds`). Returns
    one entry per device, keyed by its name as given.
    """
    import torch

    from benchmark import registry
    from benchmark.trainer import peak_memory_mb

    if epochs < 1 or (batches is not None and batches < 1) or warmup_epochs < 0:
        raise UserInputError("throughput: epochs and batches must be >= 1, warm-up epochs >= 0")
    devs = check_devices(list(devices))
    methods = registry.resolve(list(methods))
    torch.set_num_threads(threads)
    configs, train_cfg, spec, train, test = _setup(dataset, methods, data_dir, list(settings), inference_requests)
    if len(train) == 0:
        raise UserInputError(f"throughput: {dataset} has no train requests with these settings")
    out: dict[str, dict[str, Any]] = {}
    for name, dev in zip(devices, devs):
        results: dict[str, dict[str, Any]] = {}
        for m in methods:
            units = _phase_units(m, spec, configs[m], seed, dev)
            for u, unit in units.items():
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                requests, n_batches, seconds = _train_throughput(unit, train, train_cfg, seed, dev, epochs, batches,
                                                                 warmup_epochs, micro_batch)
                results[u] = {"train_requests_per_second": requests / seconds, "train_requests_timed": requests,
                              "train_batches_timed": n_batches, "train_seconds": seconds,
                              "params": sum(p.numel() for p in unit["model"].parameters())}
                if dev.type == "cuda":
                    results[u]["peak_gpu_memory_mb"] = peak_memory_mb(dev)
                print(f"throughput: {name} {u}: {requests / seconds:,.0f} train requests/s", file=sys.stderr,
                      flush=True)
            u = list(units)[-1]  # the method's last phase scores the test split
            seconds = _inference_seconds(units[u]["model"], test, train_cfg.eval_batch_size, dev)
            results[u].update(inference_requests_per_second=_ratio(len(test), seconds), inference_seconds=seconds)
            del units
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        out[name] = {
            "device": name, "device_name": device_name(dev), "torch_threads": torch.get_num_threads(),
            "dataset": dataset, "settings": list(settings), "train_requests": len(train),
            "batch_size": train_cfg.batch_size, "micro_batch": micro_batch, "warmup_epochs": warmup_epochs,
            "timed_epochs": None if batches is not None else epochs, "timed_batches": batches,
            "inference_requests": len(test), "eval_batch_size": train_cfg.eval_batch_size,
            "deterministic": train_cfg.deterministic, "torch": torch.__version__,
            "load_average_1_5_15_after": os.getloadavg(), "methods": results,
            # The file's top-level "machine" is the last writer's; entries measured elsewhere (a GPU
            # node's, merged into one perf.json) keep their own here.
            "machine": machine(),
            "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    return out


def suite_command(methods: str, dataset: str, profile: str, seeds: list[int], results_dir: Path, backend: str,
                  n_jobs: int, data_dir: str | None, settings: list[str], threads: int | None = None) -> list[str]:
    """The ``python -m benchmark`` command line the suite section times."""
    cmd = [sys.executable, "-m", "benchmark", "--methods", methods, "--dataset", dataset, "--profile", profile,
           "--seeds", *map(str, seeds), "--results-dir", str(results_dir), "--backend", backend,
           "--n-jobs", str(n_jobs), "--quiet"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if threads:
        cmd += ["--threads", str(threads)]
    for s in settings:
        cmd += ["--set", s]
    return cmd


def _time_suite(cmd: list[str], results_dir: Path) -> dict[str, Any]:
    """Run one suite command and count its records. Exit 1 (some run failed) is a result, not an
    error: the failures are counted and named; any other non-zero exit raises."""
    from benchmark import store

    started = time.perf_counter()
    proc = run_child(cmd)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    records = store.all_records(results_dir)
    failed = [r for r in records if r["status"] != "ok"]
    return {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "wall_seconds": wall,
            "runs": len(records), "ok": len(records) - len(failed), "failed": len(failed),
            "failed_runs": {f"{r['dataset']}/{r['method']}/seed{r['seed']}": r["error"] for r in failed}}


def measure_suite(dataset: str = "ml-100k", profile: str = "smoke", methods: str = "all", n_jobs: int = 2,
                  data_dir: str | None = None, settings: list[str] = (), seeds: list[int] = (0,),
                  threads: int | None = None) -> dict[str, Any]:
    """Wall time of the whole suite (``python -m benchmark``) with one lane (``--n-jobs 1``,
    sequential backend) and with ``n_jobs`` loky lanes, each in a fresh results folder, and the
    speed-up (sequential / parallel). The lists are built first, untimed, into the cache both
    runs use (the default cache, ``$DNR_BENCH_CACHE``), so both time training and evaluation
    only. Threads per lane: ``threads`` for both runs, or by default the suite's own choice (CPU
    count / lanes), as a user would run it; then the one-lane run has more threads, which on a
    loaded machine can stall PyTorch's thread pool and inflate the speed-up."""
    from benchmark import registry
    from benchmark.config import parse_set_options, resolve_run_config
    from benchmark.data import build_candidate_lists
    from benchmark.data.sources import get_source

    if n_jobs < 2:
        raise UserInputError(f"suite: --n-jobs must be >= 2 to compare with one lane, got {n_jobs}")
    dataset = get_source(dataset).name
    slugs = registry.resolve(methods.split(","))
    cfg = resolve_run_config(dataset, slugs[0], profile, parse_set_options(list(settings)))
    tick = time.perf_counter()
    _, was_cached = build_candidate_lists(dataset, data_dir=data_dir, overrides=cfg.data.to_dict(), progress=False)
    warm = {"already_cached": was_cached, "seconds": time.perf_counter() - tick}
    n_runs = len(slugs) * len(seeds)
    out: dict[str, Any] = {"dataset": dataset, "profile": profile, "methods": methods, "method_slugs": slugs,
                           "seeds": list(seeds), "settings": list(settings), "runs_asked": n_runs,
                           "cpus": os.cpu_count(), "threads": threads or "suite default (CPU count / lanes)",
                           "warm_cache": warm}
    for key, backend, jobs in (("sequential", "sequential", 1), ("parallel", "loky", n_jobs)):
        print(f"suite: {methods} on {dataset} ({profile}), {backend} --n-jobs {jobs} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="dnr-perf-suite-") as tmp:
            cmd = suite_command(methods, dataset, profile, list(seeds), Path(tmp), backend, jobs, data_dir,
                                list(settings), threads)
            lanes = max(1, min(jobs, n_runs))
            out[key] = {"backend": backend, "n_jobs": jobs, "lanes": lanes,
                        "threads_per_lane": threads or max(1, (os.cpu_count() or 1) // lanes),
                        **_time_suite(cmd, Path(tmp))}
        print(f"  {out[key]['wall_seconds']:.1f}s, {out[key]['ok']} ok, {out[key]['failed']} failed",
              file=sys.stderr, flush=True)
    out["speedup"] = out["sequential"]["wall_seconds"] / out["parallel"]["wall_seconds"]
    out["load_average_1_5_15_after"] = os.getloadavg()
    return out


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


SECTIONS = ("data", "recbole", "epochs", "scaling", "throughput", "suite")
ALL_DATASETS = ["ml-100k", "ml-1m", "kuairand", "amazon-books"]
DEFAULT_METHODS = {"epochs": "prm,sasrec,caser,gru4rec,midnn,dlcm,setrank,mir", "throughput": "prm,dnr-b",
                   "suite": "all"}
DEFAULT_EPOCHS = {"recbole": 1, "epochs": 1, "throughput": 2}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--section", choices=SECTIONS, default="data",
                   help="data: list builds (default); recbole: RecBole's SASRec trainer vs ours; "
                        "epochs: training seconds per epoch of --methods relative to PRM on --datasets; "
                        "scaling: list builds with half and all of each dataset's users; "
                        "throughput: training and inference requests/s on --devices; "
                        "suite: wall time of the whole suite with --n-jobs 1 and --n-jobs N")
    p.add_argument("--methods", default=None,
                   help="comma-separated slugs or groups; epochs: default "
                        f"{DEFAULT_METHODS['epochs']} (PRM is always added as the reference); "
                        f"throughput: default {DEFAULT_METHODS['throughput']}; suite: default all")
    p.add_argument("--datasets", nargs="+", default=None,
                   help=f"data, scaling, epochs: default {' '.join(ALL_DATASETS)}; throughput: default kuairand "
                        "with --data-dir, else ml-100k; suite: default ml-100k")
    p.add_argument("--data-dir", default=os.environ.get("DNR_BENCH_DATA"))
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting (repeatable): data.KEY for data and scaling; data/train/model/<slug>.KEY for "
                        "epochs, throughput and suite")
    p.add_argument("--output", default="results/perf.json", help="JSON file to write (sections are merged)")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="recbole: untimed epochs on each side before the timed ones; throughput: untimed epochs "
                        "of each method before the timed ones")
    p.add_argument("--threads", type=int, default=1,
                   help="epochs, throughput: torch threads (1, as in each loky lane; more threads than free "
                        "cores makes PyTorch's thread pool stall)")
    p.add_argument("--micro-batch", type=int, default=0, metavar="N",
                   help="epochs, throughput: back-propagate each batch in slices of N requests, as "
                        "`python -m benchmark --micro-batch N` (methods marked micro_batchable; default 0: whole "
                        "batches, the trainer's behaviour before slicing existed)")
    p.add_argument("--epochs", type=int, default=None,
                   help="recbole: training epochs on each side (default 1); epochs: timed epochs after one warm-up "
                        "(default 1); throughput: timed epochs (default 2)")
    p.add_argument("--batches", type=int, default=None,
                   help="throughput: time exactly this many train batches instead of --epochs epochs")
    p.add_argument("--devices", default="cpu", help="throughput: comma-separated, e.g. cpu,cuda:0")
    p.add_argument("--n-jobs", type=int, default=2, help="suite: loky lanes of the parallel run (against 1)")
    p.add_argument("--suite-profile", choices=("smoke", "paper"), default="smoke",
                   help="suite: the profile both suite runs use")
    p.add_argument("--suite-threads", type=int, default=None,
                   help="suite: torch threads per lane in both runs (default: the suite's own, CPU count / lanes)")
    p.add_argument("--label", default=None,
                   help="epochs, scaling, throughput, suite: the key of the JSON object the results go under "
                        "(default: the section's name), so that a second measurement does not overwrite the first")
    p.add_argument("--batch-size", type=int, default=None,
                   help="recbole section: batch size on both sides (default: ml-100k's train.batch_size)")
    return p


def main(argv: list[str] | None = None) -> int:
    with sigterm_as_interrupt():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: child commands were told to stop too
            return report_interrupt(exc, "a section is written to the output file only once it is measured; "
                                         "nothing of this one was written")


def _main(argv: list[str] | None) -> int:
    p = parser()
    args = p.parse_args(argv)
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS.get(args.section, 1)
    methods = args.methods or DEFAULT_METHODS.get(args.section, "")
    key = args.label or args.section
    out_path = Path(args.output)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    try:
        if args.section == "recbole":
            if epochs < 1 or args.warmup_epochs < 0:
                p.error("--epochs must be >= 1 and --warmup-epochs >= 0")
            r = report["recbole_sasrec"] = measure_recbole(epochs, args.batch_size, args.data_dir,
                                                           warmup_epochs=args.warmup_epochs)
            print(f"  RecBole {r['recbole']['sequences_per_second']:.1f} sequences/s, ours "
                  f"{r['ours']['sequences_per_second']:.1f} sequences/s "
                  f"(ratio {r['ours_over_recbole_sequences_per_second']:.2f})", file=sys.stderr)
            return _write(report, out_path)
        if args.section == "epochs":
            timing = report.setdefault(key, {})
            for ds in args.datasets or ALL_DATASETS:
                r = timing[ds] = measure_epochs(ds, methods.split(","), epochs, args.data_dir, args.settings,
                                               args.threads, micro_batch=args.micro_batch)
                for m, v in r["methods"].items():
                    ms = f", {v['inference_ms_per_request']:.2f} ms/request" if "inference_ms_per_request" in v else ""
                    print(f"  {ds} {m}: {v['seconds_per_epoch']:.1f} s/epoch, {v['ratio_to_prm']:.2f}x PRM{ms}",
                          file=sys.stderr)
            return _write(report, out_path)
        if args.section == "scaling":
            return _scaling(args, report, key, out_path)
        if args.section == "throughput":
            default = ["kuairand"] if args.data_dir else ["ml-100k"]
            timing = report.setdefault(key, {})
            for ds in args.datasets or default:
                r = measure_throughput(ds, methods.split(","), args.devices.split(","), epochs, args.data_dir,
                                       args.settings, args.threads, batches=args.batches,
                                       warmup_epochs=args.warmup_epochs, micro_batch=args.micro_batch)
                timing.setdefault(ds, {}).update(r)  # one entry per device: CPU and GPU runs merge
                for dev, v in r.items():
                    for u, t in v["methods"].items():
                        inf = (f", inference {t['inference_requests_per_second']:,.0f} requests/s"
                               if "inference_requests_per_second" in t else "")
                        print(f"  {ds} {dev} {u}: train {t['train_requests_per_second']:,.0f} requests/s{inf}",
                              file=sys.stderr)
            return _write(report, out_path)
        if args.section == "suite":
            suites = report.setdefault(key, {})
            for ds in args.datasets or ["ml-100k"]:
                r = measure_suite(ds, args.suite_profile, methods, args.n_jobs, args.data_dir, args.settings,
                                  threads=args.suite_threads)
                suites[f"{r['dataset']}:{args.suite_profile}"] = r
                print(f"  {ds} ({args.suite_profile}): --n-jobs 1 {r['sequential']['wall_seconds']:.0f}s, --n-jobs "
                      f"{args.n_jobs} {r['parallel']['wall_seconds']:.0f}s, speed-up {r['speedup']:.2f}",
                      file=sys.stderr)
            return _write(report, out_path)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    data = report.get("data", {})
    for ds in args.datasets or ALL_DATASETS:
        print(f"data build: {ds} ...", file=sys.stderr, flush=True)
        try:
            data[ds] = measure_data(ds, args.data_dir, args.settings)
        except RuntimeError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        r = data[ds]
        print(f"  build {r['build_seconds']:.1f}s (target {r['targets']['build_seconds']}s), "
              f"peak <= {r['peak_rss_mb_upper_bound']:.0f} MiB, load {r['load_seconds']:.2f}s", file=sys.stderr)
    small, large = data.get("ml-100k"), data.get("ml-1m")
    if small and large:
        data["_growth_ml100k_to_ml1m"] = {
            "interactions_ratio": large["interactions"] / small["interactions"],
            "build_seconds_ratio": large["build_seconds"] / small["build_seconds"],
            "stage_seconds_ratio": {k: large["stage_seconds"][k] / max(small["stage_seconds"][k], 1e-9)
                                    for k in large["stage_seconds"]},
        }
    report["data"] = data
    return _write(report, out_path)


def _scaling(args: argparse.Namespace, report: dict[str, Any], key: str, out_path: Path) -> int:
    """The scaling section over ``--datasets``; a dataset whose raw files are missing (or whose
    build fails) is skipped with its reason, as in the data section."""
    from benchmark.errors import DataUnavailableError

    scaling = report.setdefault(key, {})
    for ds in args.datasets or ALL_DATASETS:
        print(f"scaling: {ds} ...", file=sys.stderr, flush=True)
        try:
            r = scaling[ds] = measure_scaling(ds, args.data_dir, args.settings)
        except (RuntimeError, DataUnavailableError) as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        g = {k: "-" if v is None else f"{v:.2f}" for k, v in r["ratio_all_over_half"].items() if k != "stage_seconds"}
        print(f"  half {r['half']['build_seconds']:.1f}s / {r['half']['peak_rss_mb_upper_bound']:.0f} MiB, "
              f"all {r['all']['build_seconds']:.1f}s / {r['all']['peak_rss_mb_upper_bound']:.0f} MiB; all/half: "
              f"requests {g['requests']}, seconds {g['build_seconds']}, peak {g['peak_rss_mb_upper_bound']}",
              file=sys.stderr)
    return _write(report, out_path)


def _write(report: dict[str, Any], out_path: Path) -> int:
    report["machine"] = machine()
    report["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_path)
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
