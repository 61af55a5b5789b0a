"""``python -m benchmark``: train and evaluate methods on the shared candidate lists.

    python -m benchmark --methods prm,dnr-b --dataset ml-100k [--seeds 0 1 2] [--devices cpu]
        [--backend sequential|loky|dask] [--n-jobs N] [--profile smoke|paper]
        [--results-dir DIR] [--set KEY=VALUE ...] [--force]
    python -m benchmark --list

Exit codes: 0 everything asked for ran (or was already finished), 1 a run failed (its record
holds the error; re-running retries it), 2 bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from benchmark import registry
from benchmark.config import PROFILES, check_settings, parse_set_options
from benchmark.data.sources import get_source
from benchmark.errors import BenchmarkError, UserInputError
from benchmark.runner import BACKENDS, RunOptions, execute, plan

DEFAULT_RESULTS = Path("results")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Method groups: all, baselines, dnr, reference, score-variants, "
                                       "dnr-ablations, large (see --list). "
                                       "Settings: data.KEY, train.KEY, model.KEY (every selected method that "
                                       "has KEY) or <method>.KEY.")
    p.add_argument("--methods", help="comma-separated slugs or groups (see --list)")
    p.add_argument("--dataset", "--datasets", dest="datasets", help="comma-separated dataset names")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--devices", default="cpu", help="comma-separated: cpu, or cuda:0,cuda:1,... (one lane each)")
    p.add_argument("--backend", choices=BACKENDS, default="sequential")
    p.add_argument("--n-jobs", type=int, default=1, help="CPU lanes when --devices cpu")
    p.add_argument("--scheduler", help="Dask scheduler address for --backend dask (default: a local cluster)")
    p.add_argument("--profile", choices=list(PROFILES), default="paper")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--set", dest="settings", action="append", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--data-dir", help="raw data folder (see python -m benchmark.data --help)")
    p.add_argument("--cache-dir", help="cache folder for raw downloads and built lists")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads per lane")
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def list_methods() -> str:
    from tabulate import tabulate

    rows = []
    for slug, entry in registry.available().items():
        hp = ", ".join(f"{k}={v!r}" for k, v in entry.hyperparameters().items())
        rows.append((slug, entry.family, ",".join(entry.groups), hp))
    return tabulate(rows, headers=["method", "family", "groups", "hyper-parameters (defaults)"], tablefmt="simple",
                    maxcolwidths=[None, None, None, 90])


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.list:
            print(list_methods())
            return 0
        if not args.methods or not args.datasets:
            raise UserInputError("--methods and --dataset are required (or --list)")
        methods = registry.resolve(args.methods.split(","))
        datasets = [get_source(d).name for d in args.datasets.split(",") if d.strip()]
        settings = parse_set_options([item for group in args.settings for item in group])
        check_settings(settings, methods)
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        opts = RunOptions(results_dir=args.results_dir, profile=args.profile, settings=settings,
                          data_dir=args.data_dir, cache_dir=args.cache_dir, download=not args.no_download,
                          force=args.force, progress=not args.quiet and sys.stderr.isatty(), threads=args.threads)
        todo, done = plan(datasets, methods, args.seeds, opts)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{len(todo) + len(done)} runs asked for: {len(done)} already finished, {len(todo)} to run "
          f"({args.backend}, devices {','.join(devices)}) -> {args.results_dir}", flush=True)
    started = time.perf_counter()
    summaries = execute(todo, opts, devices, args.backend, args.n_jobs, args.scheduler)
    failed = [s for s in summaries if s["status"] != "ok"]
    print(f"finished in {time.perf_counter() - started:.0f}s: {len(summaries) - len(failed)} ok, {len(failed)} failed"
          + "".join(f"\n  failed {s['spec'].name}: {s['error']}" for s in failed), flush=True)
    return 1 if failed else 0
