"""``python -m benchmark.summary``: a short Markdown summary of the stored runs.

A pure function of the results store (it never trains): per dataset, each method's test
H/N/M/F1@6 and AUC (mean over its finished seeds, ×100), and two-sided paired t-tests
(``scipy.stats.ttest_rel``) of every DNR variant against PRM and the score variants on the
per-request N@6 and AUC, averaged over the seeds both methods share, with the seeds DNR won and
a paired t-test on the per-seed N@6 beside them. The full report with
corrections, LaTeX and figures is ``benchmark.report`` (issue "reports").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from benchmark import store
from benchmark.config import TrainConfig
from benchmark.paper import SUBSTITUTES, paper_value
from benchmark.store import RunSpec

METRICS = ("H@6", "N@6", "M@6", "F1@6", "AUC")
SCORE_SUFFIXES = ("", "-c-score", "-plus-score", "-w-score")


def references(dnr_method: str) -> list[str]:
    """What a DNR run is tested against: its backbone and the backbone's three score variants
    (PRM for the Table 1/3 rows, PIER for ``dnr-pier``; Table 2)."""
    from benchmark import registry

    backbone = registry.get(dnr_method).hyperparameters().get("backbone", "prm")
    return [backbone + suffix for suffix in SCORE_SUFFIXES]


def first_validated_epoch(history: list[dict]) -> int:
    """The first epoch of the final stage that was validated (1, unless the stage validates
    every few epochs, ``Stage.eval_every``): the earliest epoch early stopping can keep."""
    last_stage = history[-1]["stage"] if history else None
    return next((h["epoch"] for h in history if h["stage"] == last_stage and "val" in h), 1)


TRAIN_SETTINGS = ("batch_size", "lr", "weight_decay", "max_epochs", "patience", "min_patience_steps", "min_delta",
                  "grad_clip", "max_train_requests")
"""The trainer settings every method of a dataset shares under one protocol (``TrainConfig``);
records of one dataset that differ in them were trained under different protocols."""


def train_settings(config: dict) -> str:
    """A record's ``TRAIN_SETTINGS`` as one comparable text, e.g. ``batch size 2048, lr 0.001, …``."""
    train = config.get("train", {})
    return ", ".join(f"{key.replace('_', ' ')} {train.get(key)}" for key in TRAIN_SETTINGS)


def _patience(r: dict) -> tuple[int | None, int | None]:
    """The patience a trained record's early stopping applied, in epochs and in optimiser steps
    (None, None for untrained rows)."""
    used = (r.get("data") or {}).get("train_requests_used")
    train = r["config"].get("train") or {}
    if not r.get("epochs_run") or not used or not train:
        return None, None
    # records made before train.min_patience_steps existed counted epochs only
    cfg = TrainConfig(batch_size=train["batch_size"], patience=train["patience"],
                      min_patience_steps=train.get("min_patience_steps", 0))
    return cfg.patience_epochs(used), cfg.patience_steps(used)


def timing_setting(record: dict) -> str:
    """Where a run's epoch times were taken: (host, device, torch threads) from its environment. Times
    from two settings are not comparable (a GPU shared by several lanes, a different thread count)."""
    env = record.get("environment") or {}
    return repr((env.get("host"), env.get("device"), env.get("torch_threads")))


def epoch_seconds(record: dict) -> float | None:
    """Training seconds of a typical epoch of a run: each stage's median epoch (``history[i]["seconds"]``),
    weighted by the stage's number of epochs; the record's ``seconds_per_epoch`` (a plain mean) when its
    history carries no times. A median rather than the mean, because one epoch that spans a pause (a
    suspended or SIGSTOPped process, a resume after the machine slept) adds the whole pause to the mean:
    Amazon PIER seed 0's mean epoch is 140 s, its median 85 s. Per stage, because EGRerank's evaluator
    and generator epochs cost different amounts and a median across both would pick one of them."""
    by_stage: dict[str, list[float]] = {}
    for entry in record.get("history") or []:
        if entry.get("seconds"):
            by_stage.setdefault(entry.get("stage", "main"), []).append(float(entry["seconds"]))
    if not by_stage:
        return record.get("seconds_per_epoch")
    total = sum(len(v) for v in by_stage.values())
    return float(sum(len(v) * np.median(v) for v in by_stage.values()) / total)


def records_frame(results_dir: Path) -> pd.DataFrame:
    rows = []
    for r in store.all_records(results_dir):
        if r.get("status") != "ok":
            continue
        rows.append({"dataset": r["dataset"], "method": r["method"], "seed": r["seed"],
                     "profile": r["config"]["profile"], "fill": r["config"]["data"]["fill"],
                     "train_settings": train_settings(r["config"]),
                     **dict(zip(("patience_epochs", "patience_steps"), _patience(r))),
                     "max_epochs": (r["config"].get("train") or {}).get("max_epochs"),
                     "epochs": r["epochs_run"], "best_epoch": r["best_epoch"],
                     "last_epoch": (r.get("history") or [{}])[-1].get("epoch", 0),
                     "first_validated": first_validated_epoch(r.get("history") or []),
                     "sec_per_epoch": epoch_seconds(r), "timing_setting": timing_setting(r),
                     "rank_derived_auc": bool(r.get("rank_derived_auc")),
                     **{m: r["metrics"]["test"][m] for m in METRICS}})
    return pd.DataFrame(rows)


def seed_mean_vectors(results_dir: Path, dataset: str, method: str, seeds: list[int], metric: str) -> np.ndarray:
    vectors = []
    for seed in seeds:
        data = store.read_per_request(results_dir, RunSpec(dataset, method, seed))
        order = np.argsort(data["request_id"])
        vectors.append(data[metric][order])
    return np.mean(vectors, axis=0)


def paired_tests(results_dir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Every DNR run against ``references``: per-request paired t-tests on N@6 and AUC (vectors
    averaged over the shared seeds), and on N@6 the seed-level view (``stats.seed_level``): the
    seeds DNR won and a paired t-test on the per-seed test values."""
    from benchmark.stats import seed_level  # stats imports this module

    rows = []
    for dataset, part in frame.groupby("dataset"):
        seeds_of = {m: sorted(g["seed"]) for m, g in part.groupby("method")}
        for method in sorted(m for m in seeds_of if m.startswith("dnr")):
            for ref in references(method):
                if ref not in seeds_of:
                    continue
                shared = sorted(set(seeds_of[method]) & set(seeds_of[ref]))
                if not shared:
                    continue
                row = {"dataset": dataset, "dnr": method, "vs": ref, "seeds": len(shared)}
                for metric in ("N@6", "AUC"):
                    a = seed_mean_vectors(results_dir, dataset, method, shared, metric)
                    b = seed_mean_vectors(results_dir, dataset, ref, shared, metric)
                    keep = np.isfinite(a) & np.isfinite(b)
                    test = stats.ttest_rel(a[keep], b[keep])
                    row[f"Δ{metric}"] = 100 * float(np.mean(a[keep] - b[keep]))
                    row[f"p({metric})"] = float(test.pvalue)
                by_seed = seed_level(*(part[part["method"] == m].set_index("seed")["N@6"].to_dict()
                                       for m in (method, ref)))
                row["seeds won (N@6)"] = f"{by_seed.wins}/{by_seed.n}"
                row["p(N@6, seeds)"] = by_seed.p_value  # NaN: one shared seed, or Δ equal at each (stats.seed_level)
                rows.append(row)
    return pd.DataFrame(rows)


PAPER_TABLES = ("1", "2", "3", "9", "10")  # where a method's published row is looked up, in order


def paper_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Ours (seed mean, ×100) beside the paper's published value for every cell the paper has."""
    rows = []
    for (dataset, method), part in frame.groupby(["dataset", "method"]):
        for table in PAPER_TABLES:
            backbone = "prm" if table == "2" else ""
            found = {m: paper_value(table, method, dataset, m, backbone) for m in METRICS}
            if any(v is not None for v in found.values()):
                break
        else:
            continue
        row = {"dataset": dataset, "method": method, "table": table, "n": len(part)}
        for m in METRICS:
            if found[m] is not None:
                row[f"{m} ours"] = round(100 * float(part[m].mean()), 2)
                row[f"{m} paper"] = found[m]
        rows.append(row)
    return pd.DataFrame(rows)


def first_epoch_runs(frame: pd.DataFrame) -> list[str]:
    """Trained runs that early stopping ended while their first validated epoch (epoch 1, or the
    first ``eval_every``-th) was still the best: validation never improved on it, which usually
    means the run stopped before the model learned (patience counts epochs, and at batch 2048 a
    small dataset's epoch is a few steps)."""
    first = frame["first_validated"] if "first_validated" in frame else 1
    hits = frame[(frame["best_epoch"] == first) & (frame["epochs"] > first)]
    return [f"{m} seed {s}" for m, s in sorted(zip(hits["method"], hits["seed"]))]


MIN_PATIENCE_STEPS = TrainConfig().min_patience_steps


def short_patience_runs(frame: pd.DataFrame) -> list[str]:
    """Trained runs whose early stopping waited fewer optimiser steps for an improvement (applied
    patience × steps per epoch) than the default ``train.min_patience_steps`` and did stop early:
    they may have stopped before they learned."""
    if "patience_steps" not in frame:
        return []
    steps = pd.to_numeric(frame["patience_steps"], errors="coerce")
    capped = pd.to_numeric(frame["max_epochs"], errors="coerce")
    hits = frame[(steps < MIN_PATIENCE_STEPS) & (frame["epochs"] < capped)]  # NaN compares False
    return [f"{m} seed {s}" for m, s in sorted(zip(hits["method"], hits["seed"]))]


def capped_runs(frame: pd.DataFrame) -> list[str]:
    """Trained runs that the epoch cap (``train.max_epochs``) ended rather than early stopping:
    their last stage reached the cap fewer than the applied patience epochs after its best
    validation epoch, so validation might still have improved."""
    if "last_epoch" not in frame or "patience_epochs" not in frame:
        return []
    last = pd.to_numeric(frame["last_epoch"], errors="coerce")
    cap = pd.to_numeric(frame["max_epochs"], errors="coerce")
    patience = pd.to_numeric(frame["patience_epochs"], errors="coerce")
    hits = frame[(frame["epochs"] > 0) & (last >= cap) & (last - frame["best_epoch"] < patience)]  # NaN: False
    return [f"{m} seed {s} (best epoch {b} of {c})" for m, s, b, c in
            sorted(zip(hits["method"], hits["seed"], hits["best_epoch"], hits["max_epochs"]))]


def mixed_settings(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per dataset whose records were trained under more than one set of ``TRAIN_SETTINGS``:
    one line per set, with the methods that used it. Tables that put such records side by side
    compare protocols as much as methods."""
    out = {}
    for dataset, part in frame.groupby("dataset"):
        trained = part[part["epochs"] > 0]
        groups = trained.groupby("train_settings")["method"].unique()
        if len(groups) > 1:
            out[dataset] = [f"{settings}: {', '.join(sorted(methods))}" for settings, methods in groups.items()]
    return out


def method_table(part: pd.DataFrame) -> pd.DataFrame:
    """One dataset's rows: per method, the seed count, the seed mean of each test metric (×100),
    the sample standard deviation of N@6 over seeds (×100; blank with one seed), and the mean
    epochs and seconds per epoch (``epoch_seconds``). The sd is the seed-to-seed spread the
    per-request paired tests below do not see: a difference between two single-seed rows smaller
    than it says little."""
    table = part.groupby("method").agg(n=("seed", "count"), **{m: (m, "mean") for m in METRICS},
                                       **{"N@6 sd": ("N@6", "std")},
                                       epochs=("epochs", "mean"), sec_per_epoch=("sec_per_epoch", "mean"))
    for m in (*METRICS, "N@6 sd"):
        table[m] = (100 * table[m]).round(2)
    table = table[["n", *METRICS[:2], "N@6 sd", *METRICS[2:], "epochs", "sec_per_epoch"]]
    return table.round({"epochs": 1, "sec_per_epoch": 2})


def render(results_dir: Path) -> str:
    frame = records_frame(results_dir)
    if frame.empty:
        return "No finished runs yet.\n"
    out = ["# Results summary", "",
           "Test metrics ×100, mean over finished seeds (`n` = seeds; `N@6 sd`: sample standard "
           "deviation of N@6 over them; `sec_per_epoch`: each run's median training epoch, per stage, "
           "then the mean over seeds, so an epoch that spans a pause does not count). Generated by "
           "`python -m benchmark.summary`; records under `results/runs/`.", ""]
    for dataset, part in frame.groupby("dataset"):
        table = method_table(part)
        fills = ", ".join(sorted(set(part["fill"])))
        out += [f"## {dataset} (fill: {fills})", "", table.reset_index().to_markdown(index=False), ""]
        mixed = mixed_settings(part).get(dataset)
        if mixed:
            out += ["**Mixed protocols**: these records were trained under different trainer settings, "
                    "so their rows are not comparable:", "", *[f"- {line}" for line in mixed], ""]
        short = short_patience_runs(part)
        if short:
            out += [f"Stopped early with a patience under {MIN_PATIENCE_STEPS} optimiser steps (may have stopped "
                    f"before learning): {', '.join(short)}.", ""]
        capped = capped_runs(part)
        if capped:
            out += [f"Ended by the epoch cap while still within patience of their best epoch (validation might "
                    f"still have improved): {', '.join(capped)}.", ""]
        stuck = first_epoch_runs(part)
        if stuck:
            out += [f"Kept their first epoch (validation never improved on it before early stopping; "
                    f"likely stopped before learning): {', '.join(stuck)}.", ""]
        derived = sorted(set(part.loc[part["rank_derived_auc"], "method"]))
        if derived:
            out += [f"AUC is rank-derived (the method emits an order; methods.md §1.3) for: {', '.join(derived)}.", ""]
    tests = paired_tests(results_dir, frame)
    if not tests.empty:
        out += ["## DNR vs its backbone and the backbone's score variants: paired t-tests",
                "", "Two-sided `scipy.stats.ttest_rel` over test requests (per-request values averaged "
                    "over the shared seeds); Δ = DNR − reference, ×100. The last two columns look at seeds "
                    "instead of requests: the shared seeds where DNR's test N@6 is higher, and a two-sided "
                    "`ttest_rel` on the per-seed test N@6 (n − 1 degrees of freedom; nan with one seed, or "
                    "where the difference is the same at every seed, so t is undefined). "
                    "No multiple-comparison correction.",
                "", tests.to_markdown(index=False, floatfmt=".4g"), ""]
    beside = paper_comparison(frame)
    if not beside.empty:
        out += ["## Ours beside the paper's published numbers", "",
                "Only ML-1M is the same data as the paper's; the other columns are stand-ins and are "
                "listed for orientation, not comparison. The paper selects each metric's best epoch on "
                "the test set (methods.md §1.4) and its candidate lists differ from ours (protocol.md), "
                "so even ML-1M differences are protocol differences as much as method differences.", ""]
        for dataset, part in beside.groupby("dataset"):
            out += [f"### {dataset}: {SUBSTITUTES.get(dataset, 'not in the paper')}", "",
                    part.drop(columns="dataset").dropna(axis=1, how="all").to_markdown(index=False), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--output", type=Path, help="write the Markdown here (default: stdout)")
    args = p.parse_args(argv)
    text = render(args.results_dir)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
