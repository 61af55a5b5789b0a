"""``python -m benchmark.report``: every table and figure of the report, from the stored records.

    python -m benchmark.report [--results-dir results] [--out-dir DIR] [--datasets ml-1m,kuairand,...]
        [--test t|randomisation] [--alpha 0.05] [--no-figures]

A pure function of the results store (``<results-dir>/runs/``, and ``<results-dir>/sweeps/`` for
the sensitivity figure): it never trains and never reads a model, so the tables can be regenerated
on any machine from the committed records. Given the same records it writes the same files (no
timestamps), so a re-generated report diffs cleanly.

Writes, under ``--out-dir`` (default: the results dir):

* ``tables/table1.{md,tex}`` (``benchmark.tables``), ``tables/table1_tests.csv`` (the dagger family)
  and ``tables/table1_all_baselines.csv`` (DNR-B and DNR-G against every baseline in every column,
  one Holm family per DNR row: reporting.md §3.1 "Full family"), and the appendices
  ``tables/table1_seed_std.md`` (seed spread of every cell) and ``tables/table1_seed_tests.{md,csv}``
  (every DNR row against each column's strongest baseline over seeds: seeds won, ``ttest_rel`` on the
  per-seed values; reporting.md §3.1 "Seeds");
* ``tables/table{2,3,8,9,10,12}.{md,tex}`` and ``tables/paper_vs_measured.{md,tex}``
  (``benchmark.paper_tables``), with a ``*_tests.csv`` beside each tested table;
* ``figures/*.{png,pdf}`` (``benchmark.figures``);
* ``README.md``: an index saying what was run, on what data, with which commands, and which tables
  and figures could not be drawn and why.

Exit codes: 0 written; 2 bad input (no records, unknown dataset or test).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from benchmark import paper_tables, stats, tables
from benchmark.errors import BenchmarkError, UserInputError
from benchmark.paper import SUBSTITUTES
from benchmark.summary import (METRICS, MIN_PATIENCE_STEPS, capped_runs, first_epoch_runs, mixed_settings,
                               records_frame, short_patience_runs)

DATASET_ORDER = ("ml-1m", "kuairand", "amazon-books")
TREATMENTS = ("dnr-b", "dnr-g")


@dataclasses.dataclass
class Report:
    files: list[Path]
    skipped: dict[str, str]
    """Table or figure name -> why it was not written."""
    seconds: float
    mixed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Datasets whose records were trained under different trainer settings (``summary.mixed_settings``)."""


def default_datasets(frame: pd.DataFrame) -> list[str]:
    """The datasets with finished runs: the paper's three in its order, then any other, sorted."""
    present = set(frame["dataset"])
    return [d for d in DATASET_ORDER if d in present] + sorted(present - set(DATASET_ORDER))


def full_family(results_dir: Path, table: tables.Table1, test: str, alpha: float) -> pd.DataFrame:
    """Each DNR row of Table 1 against every baseline in every column; Holm over each DNR row's tests."""
    baselines = [m for m in table.values.index if table.families[m] not in (tables.REFERENCE, tables.DNR)]
    out = []
    for treatment in TREATMENTS:
        if treatment not in table.values.index:
            continue
        parts = []
        for dataset in table.datasets:
            have = [m for m in baselines if pd.notna(table.values.loc[m, (dataset, "N@6")])]
            if not have or pd.isna(table.values.loc[treatment, (dataset, "N@6")]):
                continue
            for metric in METRICS:
                parts.append(stats.compare(results_dir, dataset, metric, treatment, have, test=test,
                                           alpha=alpha, correction="none"))
        if not parts:
            continue
        family = pd.concat(parts, ignore_index=True)
        family["p_adjusted"], reject = stats.holm(family["p_value"].to_numpy(), alpha)
        family["significant"] = reject & (family["difference"] > 0).to_numpy()
        family["family_size"] = int(family["p_value"].notna().sum())
        out.append(family)
    if not out:
        return pd.DataFrame()
    frame = pd.concat(out, ignore_index=True)
    for col in ("mean_treatment", "mean_control", "difference", "ci_low", "ci_high"):
        frame[col] = 100 * frame[col]
    return frame


def seed_std_text(frame: pd.DataFrame, table: tables.Table1) -> str:
    """Appendix to Table 1 (reporting.md §3.3): the standard deviation over seeds of each cell."""
    part = frame[frame["dataset"].isin(table.datasets) & frame["method"].isin(table.values.index)]
    std = (part.groupby(["method", "dataset"])[list(METRICS)].std(ddof=1) * 100).unstack("dataset")
    count = part.groupby(["method", "dataset"])["seed"].nunique().unstack("dataset")
    rows = []
    for method in table.values.index:
        row = [table.names[method]]
        for dataset in table.datasets:
            for metric in METRICS:
                n = count.get(dataset, pd.Series(dtype=float)).get(method, 0)
                value = std[(metric, dataset)].get(method) if (metric, dataset) in std else None
                row.append(f"{value:.2f}" if n and n > 1 and pd.notna(value) else ("n=1" if n == 1 else "–"))
        rows.append(row)
    from tabulate import tabulate

    headers = ["Method", *(f"{tables.dataset_name(d)} {m}" for d in table.datasets for m in METRICS)]
    return ("**Table 1, seed spread.** Standard deviation over seeds (×100, ddof = 1) of each Table 1 cell; "
            "n=1: a single seed, so no spread; –: not run.\n\n"
            + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")


def seed_tests(frame: pd.DataFrame, table: tables.Table1) -> pd.DataFrame:
    """Appendix to Table 1 (reporting.md §3.1 "Seeds"): every DNR row against each column's
    strongest baseline (the underlined row) at the level of seeds: per-seed test values paired by
    seed, the seeds DNR won, and a two-sided ``ttest_rel`` on them (``stats.seed_level``). Values ×100."""
    part = frame[frame["dataset"].isin(table.datasets)]
    rows = []
    for dataset in table.datasets:
        here = part[part["dataset"] == dataset]
        for metric in METRICS:
            control = table.strongest_baseline(dataset, metric)
            if control is None:
                continue
            base = here[here["method"] == control].set_index("seed")[metric]
            for treatment in (m for m in table.values.index if table.families[m] == tables.DNR):
                ours = here[here["method"] == treatment].set_index("seed")[metric]
                if ours.empty:
                    continue
                result = stats.seed_level(ours.to_dict(), base.to_dict())
                rows.append({"dataset": dataset, "metric": metric, "dnr": treatment, "vs": control,
                             "seeds": result.n, "dnr_mean": 100 * result.treatment_mean,
                             "vs_mean": 100 * result.control_mean, "difference": 100 * result.mean_difference,
                             "won": result.wins, "tied": result.ties, "lost": result.losses,
                             "p_value": result.p_value, "constant": result.constant})
    return pd.DataFrame(rows, columns=["dataset", "metric", "dnr", "vs", "seeds", "dnr_mean", "vs_mean",
                                       "difference", "won", "tied", "lost", "p_value", "constant"])


def seed_tests_text(tests: pd.DataFrame, table: tables.Table1) -> str:
    """``seed_tests`` as the Markdown appendix: one row per dataset × metric × DNR row."""
    from tabulate import tabulate

    def number(x: float, digits: int = 2) -> str:
        return "–" if pd.isna(x) else f"{x:.{digits}f}"

    rows = [[tables.dataset_name(t.dataset), t.metric, table.names[t.dnr], table.names[t.vs], t.seeds,
             number(t.dnr_mean), number(t.vs_mean), f"{t.difference:+.2f}" if pd.notna(t.difference) else "–",
             f"{t.won}/{t.seeds}", "Δ equal" if t.constant else "–" if pd.isna(t.p_value) else f"{t.p_value:.3g}"]
            for t in tests.itertuples()]
    headers = ["Dataset", "Metric", "DNR", "Strongest baseline", "Seeds", "DNR", "Baseline", "Δ", "Seeds won", "p (seeds)"]
    return ("**Table 1, seed-level tests.** Each DNR row against the column's strongest baseline (the "
            "underlined row of Table 1), over the seeds both finished: seed means of the test metric (×100), "
            "their difference, the seeds DNR won, and a two-sided paired t-test on the per-seed values "
            "(`scipy.stats.ttest_rel`, n − 1 degrees of freedom; –: fewer than two shared seeds; \"Δ equal\": the "
            "difference is the same at every shared seed, up to rounding, so the t statistic is undefined "
            "and no p is given: `stats.seed_level`). It asks whether "
            "a gap survives re-training; the per-request tests of Table 1 ask whether it holds across requests. "
            "No multiple-comparison correction.\n\n"
            + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")


def _write(path: Path, text: str, files: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    files.append(path)


def _csv(path: Path, frame: pd.DataFrame, files: list[Path]) -> None:
    _write(path, frame.to_csv(index=False, float_format="%.6g"), files)


def _training_text(part: pd.DataFrame) -> str:
    """The trained records' batch size and applied patience (epochs and optimiser steps), or "mixed"."""
    trained = part[part["epochs"] > 0]
    if trained.empty:
        return "none trained"
    if trained["train_settings"].nunique() > 1:
        return "**mixed** (see below)"
    batch = trained["train_settings"].iloc[0].split(", ")[0]
    epochs, steps = trained["patience_epochs"].dropna(), trained["patience_steps"].dropna()
    if epochs.empty or epochs.nunique() > 1:
        return batch
    return f"{batch}, patience {int(epochs.iloc[0])} epochs ({int(steps.iloc[0])} steps)"


def _run_lines(frame: pd.DataFrame, datasets: Sequence[str]) -> list[str]:
    lines = ["| Dataset | Data | Methods | Seeds per method | Profile | Fill | Training | Records |",
             "|---|---|---|---|---|---|---|---|"]
    for d in datasets:
        part = frame[frame["dataset"] == d]
        seeds = part.groupby("method")["seed"].nunique()
        span = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
        lines.append(f"| {tables.dataset_name(d)} | {SUBSTITUTES.get(d, 'not in the paper')} | {part['method'].nunique()} "
                     f"| {span} | {', '.join(sorted(set(part['profile'])))} | {', '.join(sorted(set(part['fill'])))} "
                     f"| {_training_text(part)} | {len(part)} |")
    return lines


SEEDS_EXPECTED = 3
"""Seeds per method and dataset a complete set of results has: the paper profile's default
(``./run_all.sh``, seeds 0 1 2)."""


def coverage_lines(frame: pd.DataFrame, datasets: Sequence[str]) -> list[str]:
    """Per dataset, the registered methods with no finished run and those with fewer than
    ``SEEDS_EXPECTED`` seeds, so a reader sees what the tables do not cover yet."""
    from benchmark import registry

    every = registry.resolve(["all"])
    lines = []
    for d in datasets:
        seeds = frame[frame["dataset"] == d].groupby("method")["seed"].nunique()
        missing = [m for m in every if m not in seeds.index]
        short = [f"{m} ({seeds[m]})" for m in every if m in seeds.index and seeds[m] < SEEDS_EXPECTED]
        if missing or short:
            parts = ([f"not run: {', '.join(missing)}"] if missing else []) + (
                [f"fewer than {SEEDS_EXPECTED} seeds: {', '.join(short)}"] if short else [])
            lines.append(f"- {tables.dataset_name(d)}: {'; '.join(parts)}")
    if lines:
        lines = ["", "## Not covered yet", "",
                 f"Registered methods (`--methods all`) without {SEEDS_EXPECTED} finished seeds here. "
                 f"`python -m benchmark --plan --methods all --dataset DATASET --seeds 0 1 2` shows which of them "
                 "resume from a checkpoint and the time still to go.", "", *lines]
    return lines


NOTES = "NOTES.md"
"""A hand-kept file beside the generated index (the commands behind the records); linked when present."""


def index_text(frame: pd.DataFrame, datasets: Sequence[str], out_dir: Path, files: list[Path],
               skipped: dict[str, str], argv: Sequence[str]) -> str:
    """``README.md`` of the results folder: what was run, on what, how to reproduce, what is where."""
    rel = sorted(str(f.relative_to(out_dir)) for f in files)
    table_files = [f for f in rel if f.startswith("tables/") and f.endswith(".md")]
    figure_files = [f for f in rel if f.startswith("figures/") and f.endswith(".png")]
    methods = frame[frame["dataset"].isin(datasets)].groupby("dataset")["method"].unique()
    out = [
        "# Results", "",
        "Generated by `python -m benchmark.report" + (" " + " ".join(argv) if argv else "") + "` from the run "
        "records under `runs/` (one JSON + per-request NPZ per dataset × method × seed); it never trains. "
        "Regenerate after new runs with the same command. Records are written by "
        "`python -m benchmark --methods … --dataset … --seeds 0 1 2` or `./run_all.sh` (README of the project).", "",
        "## What was run", "", *_run_lines(frame, datasets), "",
    ]
    if (out_dir / NOTES).exists():
        out[-1:-1] = ["", f"How these runs were made, their status, and the notes every table of them must carry: "
                          f"[{NOTES}]({NOTES}) (kept by hand)."]
    for d in datasets:
        out.append(f"- {tables.dataset_name(d)}: {', '.join(sorted(methods.get(d, [])))}")
    mixed = mixed_settings(frame[frame["dataset"].isin(datasets)])
    if mixed:
        out += ["", "**Mixed protocols.** Records of one dataset were trained under different trainer settings; "
                    "tables that set them side by side compare protocols as much as methods:", ""]
        for d, lines in mixed.items():
            out += [f"- {tables.dataset_name(d)}:", *[f"  - {line}" for line in lines]]
    short = {d: short_patience_runs(frame[frame["dataset"] == d]) for d in datasets}
    if any(short.values()):
        out += ["", f"Runs that early stopping ended with a patience of fewer than {MIN_PATIENCE_STEPS} optimiser "
                    "steps (applied patience × steps per epoch), so they may have stopped before they learned: "
                + "; ".join(f"{tables.dataset_name(d)}: {', '.join(runs)}" for d, runs in short.items() if runs) + "."]
    capped = {d: capped_runs(frame[frame["dataset"] == d]) for d in datasets}
    if any(capped.values()):
        out += ["", "Runs that the epoch cap (`train.max_epochs`) ended while they were still within patience of "
                    "their best validation epoch, so they might have improved with more epochs: "
                + "; ".join(f"{tables.dataset_name(d)}: {', '.join(runs)}" for d, runs in capped.items() if runs) + "."]
    stuck = {d: first_epoch_runs(frame[frame["dataset"] == d]) for d in datasets}
    if any(stuck.values()):
        out += ["", "Runs that kept their first epoch (validation never improved on it before early stopping, "
                    "so they likely stopped before learning; their cells are not the method's quality): "
                + "; ".join(f"{tables.dataset_name(d)}: {', '.join(runs)}" for d, runs in stuck.items() if runs) + "."]
    out += coverage_lines(frame, datasets)
    out += ["", "## Tables", ""]
    out += [f"- [{Path(f).stem}]({f})" + (f" ([LaTeX]({f[:-3]}.tex))" if f"{f[:-3]}.tex" in rel else "")
            for f in table_files]
    if "tables/tables.tex" in rel:
        out += ["", "Every LaTeX table in one document: `pdflatex tables.tex` in `tables/` (booktabs, graphicx)."]
    csvs = [f for f in rel if f.endswith(".csv")]
    if csvs:
        out += ["", "Significance tests behind the marks (raw and Holm-adjusted p, difference with its 95% CI, "
                    "win/tie/loss): " + ", ".join(f"[{Path(f).name}]({f})" for f in csvs) + "."]
    out += ["", "## Figures", ""]
    out += [f"- [{Path(f).stem}]({f}) ([PDF]({f[:-4]}.pdf))" for f in figure_files] or ["- none drawn"]
    if skipped:
        out += ["", "## Not drawn", "", *[f"- {name}: {why}" for name, why in sorted(skipped.items())]]
    out += ["", "Per-run details (configuration, environment, epoch history) are in each record's JSON; "
                "`python -m benchmark.summary` prints a short overview.", ""]
    return "\n".join(out)


GENERATED_SUFFIXES = (".md", ".tex", ".csv", ".png", ".pdf")
"""What the report writes under ``tables/`` and ``figures/``. Such a file that this run did not
write is left over from an earlier report (e.g. a table whose rows are no longer in the store)
and is removed, so the folders only show what the current records support."""

LATEX_PACKAGES = ("booktabs", "graphicx")
"""What the tables need beyond plain LaTeX: booktabs rules and graphicx's ``\\resizebox``."""


def standalone_tex(names: Sequence[str]) -> str:
    """A document that inputs every table file in ``names`` (same folder): ``pdflatex tables.tex``
    checks the tables compile and shows them; to use one in a paper, ``\\input`` it there with
    the packages of ``LATEX_PACKAGES``."""
    body = "\n\\clearpage\n".join(f"\\input{{{name}}}" for name in names)
    return ("\\documentclass{article}\n\\usepackage[margin=1.5cm,landscape]{geometry}\n"
            + "".join(f"\\usepackage{{{pkg}}}\n" for pkg in LATEX_PACKAGES)
            + "\\begin{document}\n" + body + "\n\\end{document}\n")


def build(results_dir: Path, out_dir: Path | None = None, datasets: Sequence[str] | None = None,
          test: str = "t", alpha: float = 0.05, figures: bool = True,
          argv: Sequence[str] = ()) -> Report:
    """Write every table, figure and the index; return what was written and what was not."""
    started = time.perf_counter()
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    if test not in stats.TESTS:
        raise UserInputError(f"unknown test {test!r}; choose one of {stats.TESTS}")
    if not 0 < alpha < 1:
        raise UserInputError(f"--alpha must be in (0, 1), got {alpha}")
    frame = records_frame(results_dir)
    if frame.empty:
        raise UserInputError(f"no finished runs under {results_dir / 'runs'}; run `python -m benchmark` first")
    datasets = list(datasets) if datasets else default_datasets(frame)
    unknown = sorted(set(datasets) - set(frame["dataset"]))
    if unknown:
        raise UserInputError(f"no finished runs for dataset(s) {unknown} under {results_dir}; "
                             f"have: {sorted(set(frame['dataset']))}")
    files: list[Path] = []
    skipped: dict[str, str] = {}
    tdir = out_dir / "tables"

    try:
        main = tables.table1(results_dir, datasets, test=test, alpha=alpha)
    except UserInputError as exc:
        skipped["table1"] = str(exc)
    else:
        _write(tdir / "table1.md", tables.to_markdown(main), files)
        latex = tables.to_latex(main)
        tables.check_latex(latex)
        _write(tdir / "table1.tex", latex, files)
        if len(main.tests):
            _csv(tdir / "table1_tests.csv", main.tests, files)
        _write(tdir / "table1_seed_std.md", seed_std_text(frame, main), files)
        by_seed = seed_tests(frame, main)
        if len(by_seed):
            _write(tdir / "table1_seed_tests.md", seed_tests_text(by_seed, main), files)
            _csv(tdir / "table1_seed_tests.csv", by_seed, files)
        family = full_family(results_dir, main, test, alpha)
        if len(family):
            _csv(tdir / "table1_all_baselines.csv", family, files)

    grids = {g.key: g for g in paper_tables.build_all(results_dir, datasets, test, alpha)}
    for key in ("table2", "table3", "table8", "table9", "table10", "table12", "paper_vs_measured"):
        grid = grids.get(key)
        if grid is None:
            layout = paper_tables.LAYOUTS.get(key)
            needs = ", ".join(layout.defining) if layout else {"table8": "retriever", "table12": "prm, pier, dcdr, "
                                                             "the PRM score variants, dnr-b"}.get(key, "any method")
            skipped[key] = f"no finished run of {needs} on {', '.join(datasets)}"
            continue
        _write(tdir / f"{key}.md", paper_tables.to_markdown(grid), files)
        _write(tdir / f"{key}.tex", paper_tables.to_latex(grid), files)
        if grid.tests is not None and len(grid.tests):
            _csv(tdir / f"{key}_tests.csv", grid.tests, files)

    tex = sorted(f.name for f in files if f.suffix == ".tex" and f.parent == tdir)
    if tex:
        _write(tdir / "tables.tex", standalone_tex(tex), files)

    if figures:
        from benchmark import figures as figs

        fdir = out_dir / "figures"
        files += figs.render_all(results_dir, fdir, datasets)
        skipped.update({f"figure {k}": v for k, v in figs.skipped(results_dir, datasets).items()})
    _write(out_dir / "README.md", index_text(frame, datasets, out_dir, files, skipped, argv), files)
    for folder in (tdir, out_dir / "figures") if figures else (tdir,):
        for stale in sorted(folder.glob("*")) if folder.is_dir() else []:
            if stale.is_file() and stale.suffix in GENERATED_SUFFIXES and stale not in files:
                stale.unlink()  # written by an earlier report from records that have since changed
    return Report(files, skipped, time.perf_counter() - started, mixed_settings(frame[frame["dataset"].isin(datasets)]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0],
                                epilog="Exit codes: 0 written, 2 bad input.")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--out-dir", type=Path, help="where tables/, figures/ and README.md go (default: --results-dir)")
    p.add_argument("--datasets", "--dataset", help="comma-separated (default: every dataset with runs)")
    p.add_argument("--test", choices=stats.TESTS, default="t", help="paired test (default: t)")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    try:
        report = build(args.results_dir, args.out_dir, datasets, args.test, args.alpha, not args.no_figures,
                       argv=argv)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    out = args.out_dir or args.results_dir
    print(f"wrote {len(report.files)} files under {out} in {report.seconds:.1f}s"
          + "".join(f"\n  not written: {k}: {v}" for k, v in sorted(report.skipped.items())))
    for dataset, lines in report.mixed.items():
        print(f"warning: {dataset} records were trained under {len(lines)} different trainer settings; "
              "its tables compare protocols as much as methods (README.md of the report lists them)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
