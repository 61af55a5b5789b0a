"""``python -m benchmark``: train and evaluate methods on the shared candidate lists.

    python -m benchmark --methods prm,dnr-b --dataset ml-100k [--seeds 0 1 2] [--devices cpu]
        [--backend sequential|loky|dask] [--n-jobs N] [--profile smoke|paper]
        [--results-dir DIR] [--set KEY=VALUE ...] [--sweep KEY=V1,V2,...] [--force] [--plan]
    python -m benchmark --list

``--plan`` trains nothing: it lists every run asked for as finished, resumes (an interrupted run's
checkpoint, with the epoch it stopped at), retry, outdated or new, and the time still to go,
estimated from the finished seeds of the same method and config.

``--sweep KEY=V1,V2,...`` runs the selection once per value, exactly as ``--set KEY=V`` would, each
point into its own results root ``<results-dir>/sweeps/<KEY>=<V>/`` (runs/<dataset>/<method>/seed<k>.json
as usual, so finished points are skipped and the main results are never mixed with sweep points);
``benchmark.figures`` draws the paper's Figure 3 from them.

Exit codes: 0 everything asked for ran (or was already finished), 1 a run failed (its record
holds the error; re-running retries it), 2 bad input.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from benchmark import registry, runner
from benchmark.config import PROFILES, check_settings, parse_set_options, resolve_run_config
from benchmark.data.sources import get_source
from benchmark.errors import BenchmarkError, UserInputError
from benchmark.interrupt import report as report_interrupt, sigterm_as_interrupt
from benchmark.runner import BACKENDS, RunOptions, execute, plan

DEFAULT_RESULTS = Path("results")
SWEEP_DIR = "sweeps"
"""Folder under ``--results-dir`` that holds one results root per sweep point, named ``<KEY>=<V>``."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Method groups: {', '.join(registry.group_names())} (see --list). "
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
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", action="append",
                   help="run the selection once per value of one setting (as --set KEY=V), each into "
                        f"<results-dir>/{SWEEP_DIR}/<KEY>=<V>/ (the paper's Figure 3)")
    p.add_argument("--force", action="store_true", help="re-run finished runs")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: show each run asked for as finished, resumes (from a checkpoint), "
                        "retry (failed), outdated (another config) or new, with the time still to go where "
                        "another seed of it has finished")
    p.add_argument("--data-dir", help="raw data folder (see python -m benchmark.data --help)")
    p.add_argument("--cache-dir", help="cache folder for raw downloads and built lists")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads per lane")
    p.add_argument("--micro-batch", type=int, metavar="N",
                   help="back-propagate each training batch in slices of N requests (same update; methods whose "
                        "losses allow it): default 256 on CPU, whole batches (0) on GPUs; not part of the config")
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def list_methods() -> str:
    from tabulate import tabulate

    rows = []
    for slug, entry in registry.available().items():
        params = entry.hyperparameters()
        hp = ", ".join(f"{k}=(the {params.get('backbone')} slug's other defaults)" if k == "backbone_args" and v is None
                       else f"{k}={v!r}" for k, v in params.items())
        rows.append((slug, entry.family, ",".join(entry.groups), hp))
    return tabulate(rows, headers=["method", "family", "groups", "hyper-parameters (defaults)"], tablefmt="simple",
                    maxcolwidths=[None, None, None, 90])


def sweep_value_name(value) -> str:
    """The canonical text of one parsed sweep value, as used in its folder name: ``0.10`` and ``0.1``
    are one point, and so are ``1`` and ``1.0`` (an int fits a float setting). The folder name
    ``<KEY>=<text>`` is itself a valid ``--set`` item, which is how ``benchmark.figures`` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and value and not value.startswith(".") and "/" not in value and "\\" not in value:
        return value
    raise UserInputError(f"--sweep value {value!r}: sweep values must be numbers, booleans or plain words "
                         "(no arrays, tables, dates or path separators)")


def sweep_points(spec: str, settings: dict, methods: list[str], datasets: list[str], profile: str,
                 results_dir: Path) -> list[tuple[Path, dict]]:
    """``--sweep KEY=V1,V2,...`` -> one (results root, settings) per value, in the given order.

    Each point's settings are the ``--set`` settings plus ``KEY=V``, checked exactly as ``--set``
    is (``check_settings`` and a full config resolution for every dataset and method), so a bad
    value fails before anything trains. Also refused: a key that ``--set`` gives too, a
    ``--set <method>.NAME`` that would override a swept ``model.NAME`` for that method, a
    ``<method>.KEY`` for a method not selected, repeated values, and a selected method that the key
    does not change (it would be trained once per point for nothing)."""
    if "=" not in spec:
        raise UserInputError(f"--sweep {spec!r}: expected KEY=V1,V2,..., e.g. dnr-b.alpha=0.1,0.2,0.4")
    key, raw = (part.strip() for part in spec.split("=", 1))
    if "." not in key:
        raise UserInputError(f"--sweep {spec!r}: KEY must be section.name, e.g. dnr-b.alpha or train.lr")
    section, name = key.split(".", 1)
    raws = [v.strip() for v in raw.split(",")]
    if not raw.strip() or any(not v for v in raws):
        raise UserInputError(f"--sweep {key}: give a comma-separated list of values without empty items")
    if name in settings.get(section, {}):
        raise UserInputError(f"--sweep {key} is also given in --set; sweep it or fix it, not both")
    if section == "model":
        clash = [m for m in methods if name in settings.get(m, {})]
        if clash:
            raise UserInputError(f"--set {clash[0]}.{name} would override the swept model.{name} for {clash[0]}; "
                                 f"drop it or sweep {clash[0]}.{name}")
    elif section not in ("data", "train") and section in registry.available() and section not in methods:
        raise UserInputError(f"--sweep {key}: {section} is not among the selected methods ({','.join(methods)})")
    points: list[tuple[Path, dict]] = []
    seen: dict[str, str] = {}
    digests: dict[tuple[str, str], set[str]] = {}
    for item in raws:
        point = copy.deepcopy(settings)
        for sec, values in parse_set_options([f"{key}={item}"]).items():
            point.setdefault(sec, {}).update(values)
        text = sweep_value_name(point[section][name])
        if text in seen:
            raise UserInputError(f"--sweep {key}: the value {item!r} repeats {seen[text]!r}")
        seen[text] = item
        check_settings(point, methods)
        for dataset in datasets:
            for method in methods:
                digest = resolve_run_config(dataset, method, profile, point).digest()
                digests.setdefault((dataset, method), set()).add(digest)
        points.append((Path(results_dir) / SWEEP_DIR / f"{key}={text}", point))
    if len(points) > 1:
        unchanged = sorted({m for (_, m), found in digests.items() if len(found) == 1})
        if unchanged:
            raise UserInputError(f"--sweep {key} does not change {', '.join(unchanged)} (no such setting there); "
                                 "leave it out of --methods or sweep a key it has")
    return points


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def plan_text(runs: list["runner.PlannedRun"], results_dir: Path) -> str:
    """``--plan``: one row per run asked for, then the counts and the time still to go."""
    from tabulate import tabulate

    rows = [(r.spec.dataset, r.spec.method, r.spec.seed, r.state,
             "" if r.estimate_s is None or r.state == "finished"
             else ("≥" if r.at_least else "~") + _duration(r.estimate_s), r.detail)
            for r in runs]
    counts = Counter(r.state for r in runs)
    pending = [r for r in runs if r.state != "finished"]
    known = [r.estimate_s for r in pending if r.estimate_s is not None and not r.at_least]
    bounded = [r.estimate_s for r in pending if r.at_least]
    lines = [f"{len(runs)} runs asked for -> {results_dir}",
             tabulate(rows, headers=["dataset", "method", "seed", "state", "to go", "detail"], tablefmt="simple"),
             ", ".join(f"{counts[s]} {s}" for s in runner.PLAN_STATES if counts[s])]
    unknown = len(pending) - len(known) - len(bounded)
    if pending and not known and not bounded:
        lines.append(f"no estimate of the time still to go: no seed of these {len(pending)} runs has finished")
    elif pending:
        parts = []
        if known:
            parts.append(f"~{_duration(sum(known))} for the {len(known)} runs with a finished seed to go by")
        if bounded:
            parts.append(f"at least {_duration(sum(bounded))} for the {len(bounded)} resumed runs "
                         "with no finished seed")
        if unknown:
            parts.append(f"{unknown} without an estimate")
        lines.append("still to go on one lane: " + "; ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    with sigterm_as_interrupt():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: lanes' workers are already stopped
            return report_interrupt(exc, "finished runs are stored; a run cut short resumes from its last "
                                         "completed epoch when the same command is run again")


def _main(argv: list[str] | None) -> int:
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
        if args.micro_batch is not None and args.micro_batch < 0:
            raise UserInputError(f"--micro-batch must be >= 0 (0 = whole batches), not {args.micro_batch}")
        opts = RunOptions(results_dir=args.results_dir, profile=args.profile, settings=settings,
                          data_dir=args.data_dir, cache_dir=args.cache_dir, download=not args.no_download,
                          force=args.force, progress=not args.quiet and sys.stderr.isatty(), threads=args.threads,
                          micro_batch=args.micro_batch)
        if args.sweep and len(args.sweep) > 1:
            raise UserInputError("one --sweep per call (each sweep is a 1-D curve); run the other keys in their "
                                 "own calls")
        points = (sweep_points(args.sweep[0], settings, methods, datasets, args.profile, args.results_dir)
                  if args.sweep else [(args.results_dir, settings)])
        jobs = []  # every point is planned (and so validated) before anything trains
        for root, point_settings in points:
            point_opts = dataclasses.replace(opts, results_dir=root, settings=point_settings)
            jobs.append((point_opts, *plan(datasets, methods, args.seeds, point_opts)))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.plan:
        for point_opts, _, _ in jobs:
            print(plan_text(runner.describe_plan(datasets, methods, args.seeds, point_opts), point_opts.results_dir))
        return 0
    failed = []
    for point_opts, todo, done in jobs:
        print(f"{len(todo) + len(done)} runs asked for: {len(done)} already finished, {len(todo)} to run "
              f"({args.backend}, devices {','.join(devices)}) -> {point_opts.results_dir}", flush=True)
        started = time.perf_counter()
        try:
            summaries = execute(todo, point_opts, devices, args.backend, args.n_jobs, args.scheduler)
        except BenchmarkError as exc:  # e.g. an unreachable --scheduler: bad input, nothing trained
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        point_failed = [s for s in summaries if s["status"] != "ok"]
        failed += point_failed
        print(f"finished in {time.perf_counter() - started:.0f}s: {len(summaries) - len(point_failed)} ok, "
              f"{len(point_failed)} failed"
              + "".join(f"\n  failed {s['spec'].name}: {s['error']}" for s in point_failed), flush=True)
    return 1 if failed else 0
