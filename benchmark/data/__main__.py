"""``python -m benchmark.data --dataset ml-100k [--data-dir DIR] [--profile smoke] [--json]``: build or
load the candidate lists of a dataset and print what the protocol produced.

``--profile`` applies that profile's ``data`` settings (benchmark/config.py ``PROFILES``) under any
``--set data.KEY``, so the lists built here are exactly the ones ``python -m benchmark --profile``
loads from the cache (``run_all.sh`` pre-builds them this way)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from tabulate import tabulate

from benchmark.config import PROFILES, parse_set_options
from benchmark.data.lists import build_candidate_lists
from benchmark.data.sources import CACHE_DIR_ENV, DATA_DIR_ENV, SOURCES
from benchmark.errors import BenchmarkError, ConfigError
from benchmark.interrupt import report as report_interrupt, sigterm_as_interrupt


def summary(lists, cached: bool) -> dict[str, Any]:
    """The JSON object the command prints (stable keys; see the README)."""
    m = lists.meta
    k = m["config"]["list_size"]
    diag = m["diagnostics"]
    keys = (f"H@{k}", f"N@{k}", f"M@{k}", f"F1@{k}", "AUC")
    return {
        "dataset": m["dataset"],
        "title": m["title"],
        "note": m["note"],
        "layout": m["layout"],
        "origin": m["origin"],
        "files": m["files"],
        "label_rule": m["label_rule"],
        "users": m["users"],
        "items": m["items"],
        "interactions": m["interactions"],
        "positive_rate": m["positive_rate"],
        "k_core": m["k_core"],
        "window_counts": m["window_counts"],
        "requests": m["requests"],
        "dropped_zero_positive": m["dropped_zero_positive"],
        "candidates_per_request": m["candidates_per_request"],
        "fill": m["config"]["fill"],
        "mean_positives_per_request": m["mean_positives_per_request"],
        "retriever_auc": m["retriever_auc"],
        "retriever_fold_auc": m["retriever"]["fold_auc"],
        "retriever_order": {"test": {key: m["retriever_order"][key] for key in keys}},
        "diagnostics": {
            "exposed_vs_filler_auc": diag["exposed_vs_filler_auc"].get("test"),
            "positive_vs_rest_auc": diag["positive_vs_rest_auc"].get("test"),
            "by_split": {"exposed_vs_filler_auc": diag["exposed_vs_filler_auc"],
                         "positive_vs_rest_auc": diag["positive_vs_rest_auc"]},
            "informative": diag["informative"],
        },
        "paper_reference": m["paper_reference"],
        "build_seconds": m["build_seconds"],
        "timings": m["timings"],
        "peak_rss_mb": m["peak_rss_mb"],
        "load_seconds": m.get("load_seconds"),
        "cached": cached,
        "cache_key": m["cache_key"],
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if pct else f"{value:,.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(s: dict[str, Any]) -> str:
    ref = s["paper_reference"] or {}
    rows = [
        ("label rule", s["label_rule"], ""),
        ("k-core", s["k_core"], 20 if ref else ""),
        ("users", _fmt(s["users"]), _fmt(ref.get("users"))),
        ("items", _fmt(s["items"]), _fmt(ref.get("items"))),
        ("interactions", _fmt(s["interactions"]), _fmt(ref.get("interactions"))),
        ("positive rate", _fmt(s["positive_rate"]), ""),
    ]
    for rule, count in s["window_counts"].items():
        rows.append((f"windows {rule}", _fmt(count), _fmt(ref.get("windows")) if rule == "R1" else ""))
    rows += [(f"requests {k}", _fmt(v), "") for k, v in s["requests"].items()]
    rows += [("dropped val/test lists with no positive",
              f"{s['dropped_zero_positive']['val']:,} / {s['dropped_zero_positive']['test']:,}", "")]
    rows += [("candidates per request", s["candidates_per_request"], 50), ("fillers", s["fill"], "")]
    rows += [(f"mean positives per list ({k})", _fmt(v), "") for k, v in s["mean_positives_per_request"].items()]
    rows += [("retriever AUC (hold-out, %)", _fmt(s["retriever_auc"], True), _fmt(ref.get("retriever_auc"), True)),
             ("retriever AUC of fold models (%)", ", ".join(_fmt(a, True) for a in s["retriever_fold_auc"]), "")]
    for key, value in s["retriever_order"]["test"].items():
        rows.append((f"retriever order, test {key} (%)", _fmt(value, True), ""))
    d = s["diagnostics"]
    for split, value in d["by_split"]["exposed_vs_filler_auc"].items():
        rows.append((f"score AUC exposed vs filler ({split}, %)", _fmt(value, True), ""))
    for split, value in d["by_split"]["positive_vs_rest_auc"].items():
        rows.append((f"score AUC positive vs rest ({split}, %)", _fmt(value, True), ""))
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in s["timings"].items())
    rows.append(("build seconds", f"{s['build_seconds']:.1f} ({timing})", ""))
    if s["cached"]:
        rows.append(("loaded from cache in", f"{s['load_seconds']:.2f}s", ""))
    table = tabulate(rows, headers=["", "ours", "paper"], tablefmt="simple", disable_numparse=True)
    lines = [f"{s['title']} ({s['dataset']}) — {s['layout']} from {s['origin']}", table]
    if ref.get("dataset"):
        lines.append(f"Paper column: {ref['dataset']}.")
    if s["note"]:
        lines.append(f"Note: {s['note']}")
    if not d["informative"]:
        lines.append("Warning: the retriever score does not separate positives from the rest on test "
                     "(AUC <= 0.5); consider --set data.fill=score_matched (protocol.md §6.2).")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.data",
        description="Build (or load from the cache) a dataset's shared candidate lists and report them.",
        epilog=f"Raw files are looked up in --data-dir (or ${DATA_DIR_ENV}), then the cache "
               f"(--cache-dir or ${CACHE_DIR_ENV}, default ~/.cache/dnr-bench), then downloaded where possible.",
    )
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(SOURCES)} (aliases: book, kuaivideo, ...)")
    p.add_argument("--data-dir", help="folder holding the raw files (or per-dataset subfolders)")
    p.add_argument("--cache-dir", help="cache folder for downloads and built lists")
    p.add_argument("--set", dest="settings", action="append", metavar="data.KEY=VALUE",
                   help="override a protocol setting, e.g. --set data.fill=random (repeatable)")
    p.add_argument("--profile", choices=list(PROFILES), default="paper",
                   help="apply this run profile's data settings (as python -m benchmark --profile does)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--rebuild", action="store_true", help="ignore cached lists and build again")
    p.add_argument("--no-download", action="store_true", help="never try to download raw files")
    p.add_argument("--jobs", type=int, default=None, help="processes for the retriever fits (default: CPU count)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    with sigterm_as_interrupt():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the retriever's workers are already stopped
            return report_interrupt(exc, "candidate lists are cached only once complete; run the command again "
                                         "to build them")


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_set_options(args.settings)
        unknown = set(settings) - {"data"}
        if unknown:
            raise ConfigError(f"--set: this command only takes data.* settings, got {sorted(unknown)}")
        overrides = {**PROFILES[args.profile].get("data", {}), **settings.get("data", {})}
        lists, cached = build_candidate_lists(
            args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, overrides=overrides,
            download=not args.no_download, progress=not args.quiet and sys.stderr.isatty(), rebuild=args.rebuild,
            n_jobs=args.jobs)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    s = summary(lists, cached)
    print(json.dumps(s, indent=2) if args.json else render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
