"""The report's other tables: the paper's Tables 2, 3, 8, 9, 10 and 12, and ours beside the paper.

A pure function of the results store, like Table 1 (``benchmark.tables``), and built the same way
(reporting.md §3.3): a cell is a method's test metric on one dataset, mean over its finished seeds,
×100, 2 decimals; a method not run on a dataset is "–" (Markdown) / "--" (LaTeX), never 0.

Which rows, and what is tested (the paper's table, then what the mark means here):

* **Table 2** (score variants and DNR on two backbones): two groups, PRM and PIER, each with the
  backbone, its c-score / +score / w-score variants and DNR on that backbone (``dnr-b``,
  ``dnr-pier``). Dagger on a DNR cell = significantly better than the strongest *other* row of its
  group in that column.
* **Table 3** (ablations): PRM, then DNR-G with its heuristic-noise, w/o L_adv and w/o L_x rows,
  then the same for DNR-B. Dagger on DNR-G / DNR-B = the full model is significantly better than
  its strongest ablation in that column (the claim an ablation table makes).
* **Table 9** (DNR-B vs DNR-BL, the Beta(2, 5) warm-up): dagger on DNR-BL = better than DNR-B.
* **Table 10** (larger backbone): original PRM + DNR-G, then the 6-layer ``prm-large`` and
  ``dnr-large``; dagger on a DNR row = better than the PRM of its group.
* **Table 8** (the retriever's AUC): ours is the mean per-request test AUC of the ``retriever``
  reference run (protocol.md §8); the paper does not say whether its AUC is pooled or per request.
* **Table 12** (seconds per training epoch): ours and the ratio to PRM on the same machine, beside
  the paper's ratio, since seconds depend on hardware but ratios travel. No test.

Every tested cell of one table is one Holm family (``stats.holm``); the test is
``stats.paired_test`` on seed-averaged per-request vectors (``stats.compare``), two-sided; a
significant *loss* gets no mark. Bold = best displayed value of the column within a group (ties
all bold) for Tables 2, 9 and 10, over the whole table for Table 3 (whose first group is PRM alone).

``paper_vs_measured`` lists every published cell (Tables 1, 2, 3, 8, 9, 10, 12) that we ran, with
our value, the difference and the dataset substitution (only ML-1M is the same data).

Renderers: ``to_markdown`` (``tabulate`` "github") and ``to_latex`` (``Styler.to_latex``, booktabs,
a ``\\multicolumn`` header per dataset with ``\\cmidrule``, an italic group-title row per group);
the output passes ``tables.check_latex``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import stats
from benchmark.errors import UserInputError
from benchmark.paper import PAPER_COLUMN, SUBSTITUTES, paper_numbers
from benchmark.summary import METRICS, records_frame
from benchmark.tables import MISSING_MD, MISSING_TEX, TEST_NAMES, _escape, check_latex, dataset_name, method_name

# ------------------------------------------------------------------------------------------------
# what each table holds


@dataclasses.dataclass(frozen=True)
class Row:
    method: str
    name: str
    against: tuple[str, ...] = ()
    """Methods of the same table this row is tested against (the strongest of them per column)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    key: str
    title: str
    groups: tuple[tuple[str, tuple[Row, ...]], ...]
    metrics: tuple[str, ...] = METRICS
    bold_scope: str = "group"
    note: str = ""
    defining: tuple[str, ...] = ()
    """The rows the table exists for; without a run of one of them the table is not drawn (it would
    only repeat Table 1's rows)."""


_PRM_SCORE = ("prm", "prm-c-score", "prm-plus-score", "prm-w-score")
_PIER_SCORE = ("pier", "pier-c-score", "pier-plus-score", "pier-w-score")
_G_ABL = ("dnr-g-heuristic", "dnr-g-no-adv", "dnr-g-no-reg")
_B_ABL = ("dnr-b-heuristic", "dnr-b-no-adv", "dnr-b-no-reg")
_SCORE_NAMES = ("", "c score", "+ score", "w score")

LAYOUTS: dict[str, Layout] = {
    "table2": Layout(
        "table2", "Table 2: score variants and DNR on the PRM and PIER backbones",
        (("PRM backbone", tuple(Row(m, n or "PRM") for m, n in zip(_PRM_SCORE, _SCORE_NAMES))
          + (Row("dnr-b", "DNR (DNR-B)", _PRM_SCORE),)),
         ("PIER backbone", tuple(Row(m, n or "PIER") for m, n in zip(_PIER_SCORE, _SCORE_NAMES))
          + (Row("dnr-pier", "DNR (DNR-B on PIER)", _PIER_SCORE),))),
        note="the DNR row of each group is tested against the strongest other row of its group",
        defining=_PRM_SCORE[1:] + _PIER_SCORE + ("dnr-pier",)),
    "table3": Layout(
        "table3", "Table 3: DNR ablations",
        (("Backbone", (Row("prm", "PRM"),)),
         ("Gaussian noise", (Row("dnr-g", "DNR-G", _G_ABL), Row("dnr-g-heuristic", "w/ G (heuristic noise only)"),
                             Row("dnr-g-no-adv", "G w/o L_adv"), Row("dnr-g-no-reg", "G w/o L_x"))),
         ("Beta noise", (Row("dnr-b", "DNR-B", _B_ABL), Row("dnr-b-heuristic", "w/ B (heuristic noise only)"),
                         Row("dnr-b-no-adv", "B w/o L_adv"), Row("dnr-b-no-reg", "B w/o L_x")))),
        bold_scope="table",
        note="the full DNR-G / DNR-B row is tested against the strongest of its three ablations",
        defining=_G_ABL + _B_ABL),
    "table9": Layout(
        "table9", "Table 9: DNR-B against DNR-BL (Beta(2, 5) heuristic noise before the switch)",
        (("", (Row("dnr-b", "DNR-B"), Row("dnr-bl", "DNR-BL", ("dnr-b",)))),),
        metrics=("N@6", "M@6"), note="DNR-BL is tested against DNR-B", defining=("dnr-bl",)),
    "table10": Layout(
        "table10", "Table 10: a larger backbone (6 transformer layers)",
        (("Original PRM (2 layers)", (Row("prm", "PRM"), Row("dnr-g", "PRM + DNR (DNR-G)", ("prm",)))),
         ("Larger PRM (6 layers)", (Row("prm-large", "PRM"),
                                    Row("dnr-large", "PRM + DNR (DNR-G)", ("prm-large",))))),
        note="each DNR row is tested against the PRM of its group", defining=("prm-large", "dnr-large")),
}
TABLE12_ROWS = (("prm", "PRM"), ("pier", "PIER"), ("dcdr", "DCDR"), *((m, method_name(m)) for m in _PRM_SCORE[1:]),
                ("dnr-b", "DNR (DNR-B)"))
TABLE12_PAPER = {"prm": "prm", "pier": "pier", "dcdr": "dcdr", "prm-c-score": "score variants",
                 "prm-plus-score": "score variants", "prm-w-score": "score variants", "dnr-b": "dnr"}


@dataclasses.dataclass
class Grid:
    """One rendered-ready table: plain cell texts plus marks, grouped rows, (dataset, column) columns."""

    key: str
    title: str
    cells: pd.DataFrame
    """Index: method slug (display order); columns: (dataset, column) MultiIndex; plain text."""
    groups: pd.Series
    names: pd.Series
    bold: pd.DataFrame
    dagger: pd.DataFrame
    caption_md: str
    caption_tex: str
    values: pd.DataFrame | None = None
    """The numbers behind ``cells`` (×100 for metrics), NaN where not run."""
    tests: pd.DataFrame | None = None

    @property
    def label(self) -> str:
        return f"tab:{self.key}"


# ------------------------------------------------------------------------------------------------
# building


def _frame(results_dir: Path, datasets: Sequence[str]) -> pd.DataFrame:
    frame = records_frame(Path(results_dir))
    if frame.empty:
        raise UserInputError(f"no finished runs under {results_dir}")
    return frame[frame["dataset"].isin(list(datasets))]


def _shown(value: float) -> float:
    return float(f"{value:.2f}") if pd.notna(value) else np.nan


def _seeds_text(frame: pd.DataFrame, methods: Sequence[str]) -> str:
    counts = frame[frame["method"].isin(methods)].groupby(["method", "dataset"])["seed"].nunique()
    if counts.empty:
        return "no finished seeds"
    lo, hi = int(counts.min()), int(counts.max())
    if lo == hi:
        return "1 seed per cell" if lo == 1 else f"mean of {lo} seeds per cell"
    return f"mean of {lo} to {hi} seeds per cell"


def _caption(title: str, body: str, latex: bool) -> str:
    return (_escape(title) + ". " + body) if latex else f"**{title}.** {body}"


def _substitutes(datasets: Sequence[str]) -> str:
    subs = [f"{dataset_name(d)} is {SUBSTITUTES[d]}" for d in datasets
            if d in SUBSTITUTES and not SUBSTITUTES[d].startswith("same data")]
    return f" Substitute data: {'; '.join(subs)}." if subs else ""


def metric_grid(results_dir: Path, datasets: Sequence[str], layout: Layout, test: str = "t",
                alpha: float = 0.05) -> Grid | None:
    """Build one of Tables 2, 3, 9, 10 (``LAYOUTS``); None when none of its methods has a run."""
    if test not in stats.TESTS:
        raise UserInputError(f"unknown test {test!r}; choose one of {stats.TESTS}")
    frame = _frame(results_dir, datasets)
    rows = [row for _, group in layout.groups for row in group]
    order = [r.method for r in rows]
    if frame.empty or not set(layout.defining or order) & set(frame["method"]):
        return None
    group_of = pd.Series({r.method: title for title, group in layout.groups for r in group}).reindex(order)
    columns = pd.MultiIndex.from_product([list(datasets), list(layout.metrics)], names=["dataset", "column"])
    means = frame.groupby(["method", "dataset"])[list(layout.metrics)].mean() * 100
    values = pd.DataFrame(np.nan, index=pd.Index(order, name="method"), columns=columns)
    for (method, dataset), row in means.iterrows():
        if method in values.index:
            for metric in layout.metrics:
                values.loc[method, (dataset, metric)] = row[metric]
    shown = values.map(_shown)

    bold = pd.DataFrame(False, index=values.index, columns=columns)
    scopes = [list(group_of.index)] if layout.bold_scope == "table" else \
        [list(group_of.index[group_of == title]) for title, _ in layout.groups]
    for members in scopes:
        part = shown.loc[members]
        bold.loc[members] = (part == part.max()) & part.notna()

    tests = []
    for row in rows:
        for col in columns:
            if not row.against or pd.isna(values.loc[row.method, col]):
                continue
            candidates = [m for m in row.against if pd.notna(values.loc[m, col])]
            if not candidates:
                continue
            best = max(shown.loc[candidates, col])
            comparator = max((m for m in candidates if shown.loc[m, col] == best),
                             key=lambda m: (values.loc[m, col], -order.index(m)))
            result = stats.compare(results_dir, col[0], col[1], row.method, [comparator], test=test,
                                   alpha=alpha, correction="none").iloc[0]
            tests.append({"method": row.method, "dataset": col[0], "metric": col[1], "comparator": comparator,
                          "seeds": int(result["seeds"]), "n": int(result["n"]),
                          "difference": 100 * result["difference"], "ci_low": 100 * result["ci_low"],
                          "ci_high": 100 * result["ci_high"], "p_value": result["p_value"]})
    tests = pd.DataFrame(tests, columns=["method", "dataset", "metric", "comparator", "seeds", "n", "difference",
                                         "ci_low", "ci_high", "p_value"])
    adjusted, reject = stats.holm(tests["p_value"].to_numpy(), alpha)
    tests["p_adjusted"] = adjusted
    tests["dagger"] = reject & (tests["difference"] > 0).to_numpy()
    dagger = pd.DataFrame(False, index=values.index, columns=columns)
    for _, t in tests[tests["dagger"]].iterrows():
        dagger.loc[t["method"], (t["dataset"], t["metric"])] = True

    cells = values.map(lambda v: f"{v:.2f}" if pd.notna(v) else "")
    names = pd.Series({r.method: r.name for r in rows}).reindex(order)
    if values.isna().all().all():
        return None
    body = (f"Test performance (%), {_seeds_text(frame, order)}; best of each "
            f"{'column' if layout.bold_scope == 'table' else 'column within a group'} in bold; "
            f"@MISSING@: not run. @DAGGER@: significant gain ({layout.note}; @TEST@, Holm-corrected over the "
            f"{len(tests)} tested cells, @ALPHA@).") + _substitutes(datasets)
    if len(values) > len(values.dropna(how="all")):
        unrun = [names[m] + (f" ({group_of[m]})" if group_of[m] else "") for m in values.index
                 if values.loc[m].isna().all()]
        body += f" Not run yet, so left out: {', '.join(unrun)}."

    def caption(latex: bool) -> str:
        text = _escape(body) if latex else body
        for token, md, tex in (("@MISSING@", MISSING_MD, MISSING_TEX), ("@DAGGER@", "†", "$^{\\dagger}$"),
                               ("@TEST@", TEST_NAMES[test][0], TEST_NAMES[test][1]),
                               ("@ALPHA@", f"α = {alpha:g}", f"$\\alpha={alpha:g}$")):
            text = text.replace(token, tex if latex else md)
        return _caption(layout.title, text, latex)

    keep = values.index[values.notna().any(axis=1)]
    cells, group_of, names = cells.loc[keep], group_of.loc[keep], names.loc[keep]
    values, bold, dagger = values.loc[keep], bold.loc[keep], dagger.loc[keep]
    return Grid(layout.key, layout.title, cells, group_of, names, bold, dagger, caption(False), caption(True),
                values=values, tests=tests)


def retriever_table(results_dir: Path, datasets: Sequence[str]) -> Grid | None:
    """Table 8: the retriever's test AUC (%), ours beside the paper's."""
    frame = _frame(results_dir, datasets)
    ours = frame[frame["method"] == "retriever"].groupby("dataset")["AUC"].mean() * 100
    if ours.empty:
        return None
    paper = paper_numbers("8").set_index("dataset")["value"]
    columns = pd.MultiIndex.from_product([list(datasets), ["AUC"]], names=["dataset", "column"])
    values = pd.DataFrame(np.nan, index=pd.Index(["retriever", "paper"], name="method"), columns=columns)
    for d in datasets:
        values.loc["retriever", (d, "AUC")] = ours.get(d, np.nan)
        values.loc["paper", (d, "AUC")] = paper.get(PAPER_COLUMN.get(d, ""), np.nan)
    cells = values.map(lambda v: f"{v:.2f}" if pd.notna(v) else "")
    false = pd.DataFrame(False, index=values.index, columns=columns)
    body = ("The MF retriever's AUC (%) on the test candidate lists: ours is the mean per-request AUC "
            f"({_seeds_text(frame, ['retriever'])}); the paper's row is its Table 8 (pooled or per request "
            "is not stated).") + _substitutes(datasets)
    title = "Table 8: retriever AUC"
    return Grid("table8", title, cells, pd.Series("", index=values.index),
                pd.Series({"retriever": "MF retriever (ours)", "paper": "Paper (Table 8)"}), false, false.copy(),
                _caption(title, body, False), _caption(title, _escape(body), True),
                values=values)


def epoch_table(results_dir: Path, datasets: Sequence[str]) -> Grid | None:
    """Table 12: seconds per training epoch (ours), our ratio to PRM and the paper's ratio."""
    frame = _frame(results_dir, datasets)
    order = [m for m, _ in TABLE12_ROWS]
    part = frame[frame["method"].isin(order)]
    if part.empty:
        return None
    secs = part.groupby(["method", "dataset"])["sec_per_epoch"].mean()
    paper = paper_numbers("12")
    columns = pd.MultiIndex.from_product([list(datasets), ["s/epoch", "×PRM", "paper ×PRM"]],
                                         names=["dataset", "column"])
    values = pd.DataFrame(np.nan, index=pd.Index(order, name="method"), columns=columns)
    for d in datasets:
        ref = secs.get(("prm", d), np.nan)
        column = PAPER_COLUMN.get(d, "")
        at = paper[paper["dataset"] == column].set_index("method")["value"]
        for m in order:
            values.loc[m, (d, "s/epoch")] = secs.get((m, d), np.nan)
            values.loc[m, (d, "×PRM")] = secs.get((m, d), np.nan) / ref
            if TABLE12_PAPER[m] in at.index and "prm" in at.index:
                values.loc[m, (d, "paper ×PRM")] = at[TABLE12_PAPER[m]] / at["prm"]
    values = values.loc[values.xs("s/epoch", axis=1, level="column").notna().any(axis=1)]
    fmt = {"s/epoch": "{:.1f}", "×PRM": "{:.2f}", "paper ×PRM": "{:.2f}"}
    cells = pd.DataFrame({col: values[col].map(lambda v, f=fmt[col[1]]: f.format(v) if pd.notna(v) else "")
                          for col in values.columns}, index=values.index)
    cells.columns = columns
    false = pd.DataFrame(False, index=values.index, columns=columns)
    body = ("Training seconds per epoch as recorded by each run (machine in its record's environment): the "
            "run's median epoch (per stage for multi-stage methods; evaluation excluded; a median so that an "
            "epoch spanning a pause does not count), then the mean over seeds; the ratio to PRM on the same "
            "dataset, and the paper's ratio from its Table 12 (its 'w/ score' row covers all three "
            "score variants). Runs of different methods may have shared the machine with other work, so the "
            "ratios are indicative; python -m benchmark.perf --section epochs times methods side by side.")
    timed = part[part["sec_per_epoch"].notna()]
    mixed = [f"{dataset_name(d)} ({n})" for d in values.columns.get_level_values("dataset").unique()
             if (n := timed.loc[timed["dataset"] == d, "timing_setting"].nunique()) > 1]
    if mixed:
        body += (" Timed under more than one host/device/thread setting, so not comparable row to row: "
                 f"{', '.join(mixed)}.")
    title = "Table 12: training cost"
    names = pd.Series(dict(TABLE12_ROWS)).reindex(values.index)
    return Grid("table12", title, cells, pd.Series("", index=values.index), names, false, false.copy(),
                _caption(title, body, False), _caption(title, _escape(body), True), values=values)


PAPER_VS_PARTS = ("Paper", "Ours", "Δ")
PAPER_VS_ORDER = ("1", "2", "3", "9", "10", "8")


def paper_vs_measured(results_dir: Path, datasets: Sequence[str]) -> Grid | None:
    """Every published metric cell (Tables 1, 2, 3, 8, 9, 10) that we ran, ours beside it.

    One row per dataset × method × published row: a method printed with the same numbers in several
    tables (DNR-B in Tables 1, 2 and 3) is one row naming those tables. Table 12's seconds are
    hardware-bound and compared as ratios in Table 12 instead.
    """
    frame = _frame(results_dir, datasets)
    if frame.empty:
        return None
    paper = paper_numbers()
    paper = paper[paper["table"].isin(PAPER_VS_ORDER)].copy()
    paper["slug"] = paper["method"].where(paper["table"] != "8", "retriever")
    paper["metric"] = paper["metric"].where(paper["table"] != "8", "AUC")
    ours = frame.groupby(["method", "dataset"])
    rows = []
    for d in datasets:
        column = PAPER_COLUMN.get(d)
        if column is None:
            continue
        here = paper[paper["dataset"] == column]
        for table in PAPER_VS_ORDER:
            for (slug, backbone, name), cells in here[here["table"] == table].groupby(
                    ["slug", "backbone", "paper_row"], sort=False):
                if (slug, d) not in ours.groups:
                    continue
                published = dict(zip(cells["metric"], cells["value"].astype(float)))
                same = next((r for r in rows if r["dataset"] == d and r["slug"] == slug  # e.g. T9 repeats T1
                             and all(r["published"].get(m) == v for m, v in published.items())), None)
                if same is not None:
                    same["tables"].append(table)
                    continue
                part = ours.get_group((slug, d))
                rows.append({"dataset": d, "slug": slug, "tables": [table], "published": published,
                             "name": "MF retriever" if table == "8" else name
                             + (f" [{slug}]" if name.endswith("w/o") else "")  # Table 3 prints two rows alike
                             + (f" on {backbone.upper()}" if backbone else ""),
                             "ours": {m: 100 * float(part[m].mean()) for m in published},
                             "seeds": int(part["seed"].nunique())})
    if not rows:
        return None
    columns = pd.MultiIndex.from_product([list(METRICS), list(PAPER_VS_PARTS)], names=["dataset", "column"])
    index = pd.Index([f"{r['dataset']}|{r['slug']}|{i}" for i, r in enumerate(rows)], name="method")
    values = pd.DataFrame(np.nan, index=index, columns=columns)
    for key, r in zip(index, rows):
        for m, v in r["published"].items():
            values.loc[key, (m, "Paper")] = v
            values.loc[key, (m, "Ours")] = r["ours"][m]
            values.loc[key, (m, "Δ")] = r["ours"][m] - v
    cells = pd.DataFrame({c: values[c].map(lambda v, c=c: "" if pd.isna(v) else (f"{v:+.2f}" if c[1] == "Δ"
                                                                                else f"{v:.2f}"))
                          for c in columns}, index=index)
    cells.columns = columns
    names = pd.Series([f"{r['name']} (T{','.join(r['tables'])}; {r['seeds']} seed{'s' * (r['seeds'] > 1)})"
                       for r in rows], index=index)
    groups = pd.Series([f"{dataset_name(r['dataset'])}: {SUBSTITUTES.get(r['dataset'], '')}" for r in rows],
                       index=index)
    false = pd.DataFrame(False, index=index, columns=columns)
    body = ("The paper's published numbers (%) beside ours (mean over our seeds) for every published cell we ran; "
            "Δ = ours − paper; T = the paper's table(s) printing that row. Only ML-1M is the same data as the "
            "paper's; the KuaiRand window stands in for the proprietary Kuaivideo and an implicit Amazon 2014 "
            "Books sample for the paper's Book crawl, so those rows are for orientation, not comparison. The "
            "paper picks each metric's best epoch on the test set (methods.md §1.4), we pick one epoch on "
            "validation N@6, and the candidate lists differ (protocol.md), so even ML-1M differences are "
            "protocol as much as method differences. Table 12 (seconds) is compared as ratios in Table 12."
            + rank_agreement_text(rows))
    title = "Paper versus measured"
    return Grid("paper_vs_measured", title, cells, groups, names, false, false.copy(),
                _caption(title, body, False), _caption(title, _escape(body), True), values=values)


def rank_agreement(rows: Sequence[dict], metric: str = "N@6") -> dict[str, tuple[float, float, int]]:
    """Per dataset: Kendall's τ-b between the paper's Table 1 ``metric`` and ours over the Table 1
    methods we ran (``scipy.stats.kendalltau``), its two-sided p-value, and how many methods.
    ``rows``: ``paper_vs_measured``'s rows. Datasets with fewer than 3 such methods are left out."""
    from scipy.stats import kendalltau

    out = {}
    for d in dict.fromkeys(r["dataset"] for r in rows):
        pairs = [(r["published"][metric], r["ours"][metric]) for r in rows
                 if r["dataset"] == d and "1" in r["tables"] and metric in r["published"]]
        if len(pairs) >= 3:
            tau, p = kendalltau(*zip(*pairs))
            out[d] = (float(tau), float(p), len(pairs))
    return out


def rank_agreement_text(rows: Sequence[dict], metric: str = "N@6") -> str:
    agreement = rank_agreement(rows, metric)
    if not agreement:
        return ""
    parts = [f"{dataset_name(d)} τ = {tau:+.2f} (p = {p:#.2g}, {n} methods)" for d, (tau, p, n) in agreement.items()]
    return (f" Does our ordering of Table 1's methods follow the paper's? Kendall's τ-b between the two {metric} "
            f"columns over the Table 1 methods we ran: {'; '.join(parts)}.")


def build_all(results_dir: Path, datasets: Sequence[str], test: str = "t", alpha: float = 0.05) -> list[Grid]:
    """Every table of this module that has data, in the paper's order."""
    grids = [metric_grid(results_dir, datasets, LAYOUTS[k], test, alpha) for k in ("table2", "table3")]
    grids += [retriever_table(results_dir, datasets)]
    grids += [metric_grid(results_dir, datasets, LAYOUTS[k], test, alpha) for k in ("table9", "table10")]
    grids += [epoch_table(results_dir, datasets), paper_vs_measured(results_dir, datasets)]
    return [g for g in grids if g is not None]


# ------------------------------------------------------------------------------------------------
# renderers


def _header(dataset: str, column: str) -> str:
    return f"{dataset_name(dataset)} {column}".strip()


def to_markdown(grid: Grid) -> str:
    """Caption paragraph, then a GitHub table; a group's title on its first row."""
    headers = ["Group", "Method", *(_header(d, c) for d, c in grid.cells.columns)]
    show_groups = grid.groups.astype(bool).any()
    body, previous = [], None
    for method in grid.cells.index:
        group = grid.groups[method]
        row = [group if group != previous else "", grid.names[method]]
        previous = group
        for col in grid.cells.columns:
            text = grid.cells.loc[method, col] or MISSING_MD
            if text != MISSING_MD and grid.bold.loc[method, col]:
                text = f"**{text}**"
            row.append(text + ("†" if grid.dagger.loc[method, col] else ""))
        body.append(row if show_groups else row[1:])
    grid_text = tabulate(body, headers=headers if show_groups else headers[1:], tablefmt="github",
                         disable_numparse=True)
    return f"{grid.caption_md}\n\n{grid_text}\n"


def to_latex(grid: Grid) -> str:
    """A booktabs table via ``Styler.to_latex``; ``table*`` when it has more than 8 value columns."""
    two_level = any(d for d, _ in grid.cells.columns)
    if two_level:
        columns = pd.MultiIndex.from_tuples([(_escape(dataset_name(d)), _escape(c)) for d, c in grid.cells.columns])
    else:
        columns = pd.Index([_escape(c) for _, c in grid.cells.columns])
    index = [_escape(n) for n in grid.names]
    if len(set(index)) < len(index):  # Styler needs unique labels; invisible suffixes keep them apart
        seen: dict[str, int] = {}
        for i, name in enumerate(index):
            seen[name] = seen.get(name, 0) + 1
            index[i] = name + "{}" * (seen[name] - 1)
    texts = pd.DataFrame(MISSING_TEX, index=index, columns=columns, dtype=object)
    props = pd.DataFrame("", index=index, columns=columns, dtype=object)
    for i, method in enumerate(grid.cells.index):
        for j, col in enumerate(grid.cells.columns):
            text = grid.cells.loc[method, col]
            if not text:
                continue
            texts.iat[i, j] = _escape(text) + ("$^{\\dagger}$" if grid.dagger.loc[method, col] else "")
            if grid.bold.loc[method, col]:
                props.iat[i, j] = "textbf:--rwrap;"
    n = len(columns)
    wide = n > 8
    out = texts.style.apply(lambda _: props, axis=None).to_latex(
        hrules=True, multicol_align="c", column_format="l" + "c" * n, environment="table*" if wide else "table",
        position="t", caption=grid.caption_tex, label=grid.label, position_float="centering")
    return _post_process(out, grid, two_level, wide)


def _post_process(text: str, grid: Grid, two_level: bool, wide: bool) -> str:
    lines = text.splitlines()
    if two_level:
        header = lines.index("\\toprule") + 1  # the dataset row (\\multicolumn unless one column each)
        width = len(grid.cells.columns.get_level_values(1).unique())
        blocks = len(grid.cells.columns) // width
        lines.insert(header + 1, "".join(f"\\cmidrule(lr){{{2 + k * width}-{1 + (k + 1) * width}}}"
                                         for k in range(blocks)))
        first_body = lines.index("\\midrule", header) + 1
    else:
        first_body = lines.index("\\midrule") + 1
    n = len(grid.cells.columns) + 1
    groups = list(grid.groups)
    inserts = []
    for i, group in enumerate(groups):
        if group and (i == 0 or group != groups[i - 1]):
            title = f"\\multicolumn{{{n}}}{{l}}{{\\textit{{{_escape(group)}}}}} \\\\"
            inserts.append((i, ([] if i == 0 else ["\\midrule"]) + [title]))
    for offset, new in reversed(inserts):
        lines[first_body + offset:first_body + offset] = new
    if wide:
        start = next(i for i, line in enumerate(lines) if line.startswith("\\begin{tabular}"))
        end = next(i for i, line in enumerate(lines) if line.startswith("\\end{tabular}"))
        lines[end] = lines[end] + "}"
        lines[start:start] = ["\\resizebox{\\textwidth}{!}{%", "\\setlength{\\tabcolsep}{3pt}"]
    out = "\n".join(lines) + "\n"
    check_latex(out)
    return out
