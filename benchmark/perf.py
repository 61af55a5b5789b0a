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
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_SECONDS = {"ml-100k": 30, "ml-1m": 600, "kuairand": 120, "amazon-books": 120}
TARGET_PEAK_MB = 4096
TARGET_LOAD_SECONDS = 2.0


def _run_data_command(dataset: str, data_dir: str | None, cache: Path, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "benchmark.data", "--dataset", dataset, "--cache-dir", str(cache), "--json",
           "--quiet", *extra]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
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
    peak_total = peak["main"] + peak["retriever_worker"] * peak["n_jobs"]
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


def measure_epochs(dataset: str, methods: list[str], epochs: int, data_dir: str | None, settings: list[str],
                   threads: int = 1, seed: int = 0, inference_requests: int = 2048) -> dict[str, Any]:
    """Training seconds per epoch of each method relative to PRM, stepped in turn on every batch,
    and inference milliseconds per request.

    Every train batch is given to each method in turn (the first method rotates with the epoch),
    so drifts in the machine's load hit all methods alike; only the optimiser steps are timed
    (all active steps, as the trainer runs them: loss, backward, clipping, Adam). A method with
    several phases (EGRerank's evaluator and generator stages; DNR before and after its switch
    epoch T) is timed once per phase, as ``slug:stage`` / ``slug@epoch>=N`` entries, each on its
    own instance. The first epoch is a warm-up; the rest are averaged. Inference: ``score`` in
    eval mode over the first ``inference_requests`` test requests at the run's eval batch size,
    after the timed epochs (the last phase's instance), in ms per request.
    """
    import torch

    from benchmark import registry
    from benchmark.batches import SplitTensors, data_spec
    from benchmark.config import parse_set_options, resolve_run_config
    from benchmark.data import build_candidate_lists
    from benchmark.trainer import epoch_order, seed_everything, train_steps

    torch.set_num_threads(threads)
    if "prm" not in methods:
        methods = ["prm", *methods]
    overrides = parse_set_options(settings)
    configs = {m: resolve_run_config(dataset, m, "paper", overrides) for m in methods}
    data_cfg, train_cfg = configs["prm"].data, configs["prm"].train
    lists, _ = build_candidate_lists(dataset, data_dir=data_dir, overrides=data_cfg.to_dict(), progress=False)
    spec = data_spec(lists)
    train = SplitTensors.of(lists, "train", limit=train_cfg.max_train_requests)
    test = SplitTensors.of(lists, "test", limit=inference_requests)
    units: dict[str, dict[str, Any]] = {}
    for m in methods:
        seed_everything(seed)
        for suffix, s_index, first in _phases(registry.build(m, spec, **configs[m].model)):
            seed_everything(seed)
            model = registry.build(m, spec, **configs[m].model).train()
            stage = model.stages()[s_index]
            if stage.on_start is not None:
                stage.on_start()
            units[m + suffix] = {"method": m, "model": model, "steps": stage.steps, "offset": first - 1,
                                 "optims": [torch.optim.Adam(list(step.parameters()), lr=step.lr or train_cfg.lr,
                                                             weight_decay=train_cfg.weight_decay)
                                            for step in stage.steps]}
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
                train_steps(u["model"], u["steps"], u["optims"], batch, epoch + u["offset"], train_cfg.grad_clip)
                spent[names[(i + epoch) % len(names)]] += time.perf_counter() - tick
        print(f"epochs: epoch {epoch} " + ", ".join(f"{u} {v:.1f}s" for u, v in spent.items()),
              file=sys.stderr, flush=True)
        if epoch > 1:  # epoch 1 is the warm-up
            for u in names:
                seconds[u].append(spent[u])
    last = {units[u]["method"]: u for u in names}  # each method's last phase
    inference = {}
    for m, u in last.items():
        model = units[u]["model"].eval()
        with torch.no_grad():
            warm = next(iter(test.batches(64)), None)
            if warm is not None:
                model.score(warm)  # first-call allocations are not part of the per-request cost
            tick = time.perf_counter()
            for b in test.batches(train_cfg.eval_batch_size):
                model.score(b)
            inference[u] = (time.perf_counter() - tick) * 1000 / max(len(test), 1)
    prm = sum(seconds["prm"]) / len(seconds["prm"])
    return {
        "dataset": dataset, "train_requests": len(train), "batch_size": train_cfg.batch_size,
        "timed_epochs": epochs, "torch_threads": torch.get_num_threads(), "settings": settings,
        "inference_requests": len(test), "eval_batch_size": train_cfg.eval_batch_size,
        "load_average_1_5_15_after": os.getloadavg(),
        "methods": {u: {"seconds_per_epoch": sum(v) / len(v), "ratio_to_prm": sum(v) / len(v) / prm,
                        "params": sum(p.numel() for p in units[u]["model"].parameters()),
                        **({"inference_ms_per_request": inference[u]} if u in inference else {})}
                    for u, v in seconds.items()},
    }


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--section", choices=("data", "recbole", "epochs"), default="data",
                   help="data: list builds (default); recbole: RecBole's SASRec trainer vs ours; "
                        "epochs: training seconds per epoch of --methods relative to PRM on --datasets")
    p.add_argument("--methods", default="prm,sasrec,caser,gru4rec,midnn,dlcm,setrank,mir",
                   help="epochs section: comma-separated slugs (PRM is always added as the reference)")
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m", "kuairand", "amazon-books"])
    p.add_argument("--data-dir", default=os.environ.get("DNR_BENCH_DATA"))
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="data.KEY=VALUE")
    p.add_argument("--output", default="results/perf.json", help="JSON file to write (sections are merged)")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="recbole section: untimed epochs on each side before the timed ones")
    p.add_argument("--threads", type=int, default=1,
                   help="epochs section: torch threads (1, as in each loky lane; more threads than free "
                        "cores makes PyTorch's thread pool stall)")
    p.add_argument("--epochs", type=int, default=1,
                   help="recbole: training epochs on each side; epochs: timed epochs after one warm-up")
    p.add_argument("--label", default="epochs",
                   help="epochs section: the key of the JSON object the timings go under (one per method set, "
                        "so that a second set does not overwrite the first)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="recbole section: batch size on both sides (default: ml-100k's train.batch_size)")
    args = p.parse_args(argv)

    out_path = Path(args.output)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    if args.section == "recbole":
        if args.epochs < 1 or args.warmup_epochs < 0:
            p.error("--epochs must be >= 1 and --warmup-epochs >= 0")
        r = report["recbole_sasrec"] = measure_recbole(args.epochs, args.batch_size, args.data_dir,
                                                       warmup_epochs=args.warmup_epochs)
        print(f"  RecBole {r['recbole']['sequences_per_second']:.1f} sequences/s, ours "
              f"{r['ours']['sequences_per_second']:.1f} sequences/s "
              f"(ratio {r['ours_over_recbole_sequences_per_second']:.2f})", file=sys.stderr)
        return _write(report, out_path)
    if args.section == "epochs":
        timing = report.setdefault(args.label, {})
        for ds in args.datasets:
            r = timing[ds] = measure_epochs(ds, args.methods.split(","), args.epochs, args.data_dir, args.settings,
                                           args.threads)
            for m, v in r["methods"].items():
                ms = f", {v['inference_ms_per_request']:.2f} ms/request" if "inference_ms_per_request" in v else ""
                print(f"  {ds} {m}: {v['seconds_per_epoch']:.1f} s/epoch, {v['ratio_to_prm']:.2f}x PRM{ms}", file=sys.stderr)
        return _write(report, out_path)
    data = report.get("data", {})
    for ds in args.datasets:
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
