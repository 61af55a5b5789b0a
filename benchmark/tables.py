"""Table 1 of the report: overall test performance of every method, with the paper's markings.

A pure function of the results store (records + per-request vectors, ``store``). What a cell is,
and how it is marked (reporting.md §3.3):

Values:
    The mean over a method's finished seeds of its test metric on one dataset, ×100
    (``summary.records_frame``), shown with 2 decimals. A method not run on a dataset has no value
    (NaN in ``Table1.values``) and is shown as "–" in Markdown, "--" in LaTeX, never as 0; such a
    cell takes no part in bold, underline or the improvement row.

Rows:
    Grouped by family in ``api.FAMILIES`` order: the reference rows (retriever, random) come
    *first*, as a floor to read the rest against, then sequential ("traditional" in the paper),
    list-refinement, generator-evaluator, diffusion, score variants, and the DNR rows last. Within
    a family, the paper's Table 1 order, then the order given by the caller. The "Improv." row
    follows the DNR rows.

Bold / underline:
    Ranks are decided on the *displayed* (2-decimal) values and every tie is marked. Bold = best
    in the column over all shown rows (reference rows included: a reader should see it if the
    retriever is best). Underline = best *baseline*, i.e. best over the rows that are neither
    DNR nor reference; it is the comparator of the dagger test.

Dagger (reporting.md §3.1 "Multiple comparisons", headline family):
    On the treatment row (default DNR-B) only. For each dataset × metric column the treatment is
    compared with that column's best baseline (on ties of the displayed value, the one with the
    highest unrounded mean, then the first in row order) by ``stats.compare`` (a two-sided paired
    test on seed-averaged per-request vectors, over the seeds both share). The p-values of all
    columns form one family, Holm-corrected (``stats.holm``). Dagger = rejected at ``alpha`` and a
    positive mean difference (a significant *loss* gets no mark).

Improv.:
    Relative gain, in %, of the best DNR row of a column over its best baseline, from the
    unrounded means, shown with one decimal and a sign ("+3.3%"), as in the paper.

Rank-derived AUC:
    Methods that emit an order rather than scores get an AUC derived from ranks (records'
    ``rank_derived_auc``; methods.md §1.3). Their AUC cells carry "§" (Markdown) or
    ``\\textsuperscript{\\S}`` (LaTeX), and the caption says so.

Markdown (``to_markdown``, ``tabulate`` "github"): bold ``**x**``, underline ``<u>x</u>`` (HTML,
since Markdown has no underline and ``_x_`` would read as italics), dagger "†", a "Family" column
naming each group on its first row. LaTeX (``to_latex``, ``Styler.to_latex``): booktabs rules,
``\\textbf``/``\\underline`` (wrapping the whole cell text including its marks), ``$^{\\dagger}$``,
a ``\\multicolumn`` header per dataset with ``\\cmidrule(lr)`` under it, a ``\\midrule`` between
families, ``table*`` + ``\\resizebox``; the preamble needs ``booktabs`` and ``graphicx``.
``check_latex`` is a structural check of the output (balanced braces and environments, booktabs
rules, cells per row).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark import registry, stats
from benchmark.api import FAMILIES
from benchmark.errors import UserInputError
from benchmark.paper import SUBSTITUTES, paper_numbers
from benchmark.summary import METRICS, records_frame

REFERENCE, DNR = "reference", "dnr"
DEFAULT_GROUPS = ("reference", "baselines", "dnr")
DATASET_NAMES = {"ml-1m": "ML-1M", "kuairand": "KuaiRand", "amazon-books": "Books"}
EXTRA_METHOD_NAMES = {
    "retriever": "Retriever", "random": "Random", "dnr-bl": "DNR-BL", "pier-lite": "PIER-lite",
    # Table 2's variants with their backbone named (figures and lists show them out of their group)
    "prm-c-score": "PRM c score", "prm-plus-score": "PRM + score", "prm-w-score": "PRM w score",
    "pier-c-score": "PIER c score", "pier-plus-score": "PIER + score", "pier-w-score": "PIER w score",
    "dnr-pier": "DNR-B on PIER", "dnr-pier-g": "DNR-G on PIER",
    # Table 3's ablations and Table 10's larger pair, in the words of those tables
    "dnr-g-heuristic": "DNR-G (heuristic noise only)", "dnr-b-heuristic": "DNR-B (heuristic noise only)",
    "dnr-g-no-adv": "DNR-G w/o L_adv", "dnr-b-no-adv": "DNR-B w/o L_adv",
    "dnr-g-no-reg": "DNR-G w/o L_x", "dnr-b-no-reg": "DNR-B w/o L_x",
    "prm-large": "PRM (6 layers)", "dnr-large": "DNR-G (6 layers)",
}
"""Display names of the methods Table 1 has no row for."""
FAMILY_NAMES = {"reference": "Reference", "sequential": "Traditional", "list-refinement": "List refinement",
                "generator-evaluator": "Generator-evaluator", "diffusion": "Diffusion",
                "score-variant": "Score variants", "dnr": "Ours"}
TEST_NAMES = {"t": ("two-sided paired Student's t-test", "two-sided paired $t$-test"),
              "randomisation": ("two-sided paired randomisation (sign-flip) test",
                                "two-sided paired randomisation (sign-flip) test")}
IMPROVEMENT = "Improv."
MISSING_MD, MISSING_TEX = "–", "--"


@dataclasses.dataclass
class Table1:
    """Everything Table 1 shows. Frames are indexed by method slug (row order = display order) and
    have (dataset, metric) columns; ``tests`` has one row per column that could be tested."""

    values: pd.DataFrame
    """Seed-mean test metric ×100; NaN where the method was not run on the dataset."""
    bold: pd.DataFrame
    underline: pd.DataFrame
    dagger: pd.DataFrame
    rank_derived: pd.DataFrame
    improvement: pd.Series
    """Best DNR row vs best baseline, in % of the baseline, per column (NaN when undefined)."""
    tests: pd.DataFrame
    """Per column: comparator (the best baseline tested), n, difference, p_value, p_adjusted, dagger."""
    families: pd.Series
    names: pd.Series
    """Display name per method slug."""
    treatment: str
    test: str
    alpha: float
    datasets: list[str]
    fills: dict[str, list[str]]
    seeds: pd.DataFrame
    """Number of finished seeds per method (rows) and dataset (columns); 0 where not run."""
    label: str = "tab:main"

    def strongest_baseline(self, dataset: str, metric: str) -> str | None:
        """The best baseline of one column (the underlined row the dagger tests against)."""
        return _strongest(self.values, self.underline, (dataset, metric))

    def caption(self, latex: bool = False) -> str:
        """The caption: what the numbers are, the markings, the test, correction, α, lists, seeds, data."""
        return _caption(self, latex)


# ------------------------------------------------------------------------------------------------
# building


def _paper_order() -> list[str]:
    return list(dict.fromkeys(paper_numbers("1")["method"]))


def method_name(slug: str) -> str:
    """The paper's row name for a Table 1 method, else a readable fallback."""
    frame = paper_numbers("1")
    hit = frame.loc[frame["method"] == slug, "paper_row"]
    if len(hit):
        return str(hit.iloc[0])
    return EXTRA_METHOD_NAMES.get(slug, slug)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def _row_order(methods: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Methods sorted by family (``api.FAMILIES``), then paper order, then the given order."""
    family = {m: registry.get(m).family for m in methods}
    unknown = {m: f for m, f in family.items() if f not in FAMILIES}
    if unknown:
        raise UserInputError(f"methods with a family outside {FAMILIES}: {unknown}")
    paper = _paper_order()
    position = {m: (FAMILIES.index(family[m]), paper.index(m) if m in paper else len(paper) + i)
                for i, m in enumerate(methods)}
    return sorted(methods, key=position.__getitem__), family


def _rounded(values: pd.DataFrame) -> pd.DataFrame:
    """The displayed numbers (2 decimals) as floats, so ranks and ties follow what is printed."""
    return values.map(lambda v: float(f"{v:.2f}") if pd.notna(v) else np.nan)


def _strongest(values: pd.DataFrame, underline: pd.DataFrame, col) -> str | None:
    """A column's best baseline, the dagger's comparator: of the underlined rows (tied on the
    displayed value), the one with the highest unrounded mean, then the first in row order; None
    when no baseline has a value there."""
    rows = list(values.index)
    tied = [m for m in rows if underline.loc[m, col]]
    return max(tied, key=lambda m: (values.loc[m, col], -rows.index(m))) if tied else None


def _best(column: pd.Series) -> pd.Series:
    """True at every row equal to the column's maximum (NaN rows never)."""
    if column.notna().any():
        return column == column.max()
    return pd.Series(False, index=column.index)


def table1(results_dir: Path, datasets: Sequence[str], methods: Sequence[str] | None = None,
           treatment: str = "dnr-b", alpha: float = 0.05, test: str = "t", label: str = "tab:main") -> Table1:
    """Build Table 1 from the finished runs under ``results_dir`` (see the module docstring).

    ``methods`` defaults to the registry's reference, baseline and DNR methods that have at least
    one finished run on one of ``datasets``. ``test`` is one of ``stats.TESTS``.
    """
    if test not in stats.TESTS:
        raise UserInputError(f"unknown test {test!r}; choose one of {stats.TESTS}")
    datasets = list(datasets)
    if not datasets:
        raise UserInputError("table1 needs at least one dataset")
    frame = records_frame(Path(results_dir))
    if frame.empty:
        raise UserInputError(f"no finished runs under {results_dir}")
    frame = frame[frame["dataset"].isin(datasets)]
    if methods is None:
        present = set(frame["method"])
        methods = [m for m in registry.resolve(list(DEFAULT_GROUPS)) if m in present]
    else:
        methods = [registry.get(m).slug for m in dict.fromkeys(methods)]
    frame = frame[frame["method"].isin(methods)]
    if frame.empty:
        raise UserInputError(f"none of {list(methods)} has a finished run on {datasets}")
    rows, family = _row_order(methods)

    columns = pd.MultiIndex.from_product([datasets, METRICS], names=["dataset", "metric"])
    means = frame.groupby(["method", "dataset"])[list(METRICS)].mean() * 100
    values = pd.DataFrame(np.nan, index=pd.Index(rows, name="method"), columns=columns)
    derived = pd.DataFrame(False, index=values.index, columns=columns)
    seeds = frame.groupby(["method", "dataset"])["seed"].nunique().unstack("dataset")
    seeds = seeds.reindex(index=rows, columns=datasets).fillna(0).astype(int)
    rank_auc = frame.groupby(["method", "dataset"])["rank_derived_auc"].any()
    for (method, dataset), row in means.iterrows():
        for metric in METRICS:
            values.loc[method, (dataset, metric)] = row[metric]
        derived.loc[method, (dataset, "AUC")] = bool(rank_auc[(method, dataset)])

    shown = _rounded(values)
    baselines = [m for m in rows if family[m] not in (REFERENCE, DNR)]
    dnr_rows = [m for m in rows if family[m] == DNR]
    bold = shown.apply(_best)
    underline = pd.DataFrame(False, index=values.index, columns=columns)
    underline.loc[baselines] = shown.loc[baselines].apply(_best).to_numpy() if baselines else False

    improvement = pd.Series(np.nan, index=columns, dtype=float)
    tests = []
    for col in columns:
        base = values.loc[baselines, col].dropna()
        ours = values.loc[dnr_rows, col].dropna()
        if len(base) and len(ours) and base.max() != 0:
            improvement[col] = 100 * (ours.max() - base.max()) / base.max()
        comparator = _strongest(values, underline, col)
        if comparator is None or treatment not in values.index or pd.isna(values.loc[treatment, col]):
            continue
        result = stats.compare(results_dir, col[0], col[1], treatment, [comparator], test=test,
                               alpha=alpha, correction="none").iloc[0]
        tests.append({"dataset": col[0], "metric": col[1], "comparator": comparator, "n": int(result["n"]),
                      "difference": 100 * result["difference"], "p_value": result["p_value"]})
    tests = pd.DataFrame(tests, columns=["dataset", "metric", "comparator", "n", "difference", "p_value"])
    adjusted, reject = stats.holm(tests["p_value"].to_numpy(), alpha)
    tests["p_adjusted"] = adjusted
    tests["dagger"] = reject & (tests["difference"] > 0).to_numpy()
    dagger = pd.DataFrame(False, index=values.index, columns=columns)
    for _, t in tests[tests["dagger"]].iterrows():
        dagger.loc[treatment, (t["dataset"], t["metric"])] = True

    fills = {d: sorted(set(frame.loc[frame["dataset"] == d, "fill"])) for d in datasets}
    return Table1(values=values, bold=bold, underline=underline, dagger=dagger, rank_derived=derived,
                  improvement=improvement, tests=tests, families=pd.Series(family).reindex(rows),
                  names=pd.Series({m: method_name(m) for m in rows}).reindex(rows), treatment=treatment,
                  test=test, alpha=alpha, datasets=datasets, fills=fills, seeds=seeds, label=label)


# ------------------------------------------------------------------------------------------------
# caption


def _seed_text(table: Table1) -> str:
    counts = table.seeds.where(table.seeds > 0).stack().dropna().astype(int)
    if counts.empty:
        return "no finished seeds"
    if counts.nunique() == 1:
        return f"mean of {counts.iloc[0]} seeds per method"
    # One slot per dataset, "–" where the method was not run, so that "SASRec –/3/3" cannot be
    # read as three seeds on ML-1M.
    per_method = []
    for method, row in table.seeds.iterrows():
        if (row > 0).any():
            per_method.append(f"{table.names[method]} {'/'.join(str(k) if k > 0 else MISSING_MD for k in row)}")
    order = "/".join(dataset_name(d) for d in table.datasets)
    return f"mean over each method's seeds (seeds per method, {order}: {', '.join(per_method)})"


def _caption(table: Table1, latex: bool) -> str:
    def tex(s: str) -> str:
        return _escape(s) if latex else s

    dagger = "$^{\\dagger}$" if latex else "†"
    section = "\\textsuperscript{\\S}" if latex else "§"
    alpha = f"$\\alpha={table.alpha:g}$" if latex else f"α = {table.alpha:g}"
    pct = "\\%" if latex else "%"
    n_by_dataset = table.tests.groupby("dataset")["n"].max() if len(table.tests) else pd.Series(dtype=int)
    requests = [f"{dataset_name(d)}: {int(n_by_dataset[d]):,}" for d in table.datasets if d in n_by_dataset]
    requests = [r.replace(",", "{,}") if latex else r for r in requests]
    fills = "; ".join(f"{dataset_name(d)}: {', '.join(f) or 'n/a'}" for d, f in table.fills.items())
    n_tests = len(table.tests)
    bold = "\\textbf{bold}" if latex else "**bold**"
    under = "\\underline{underlined}" if latex else "<u>underlined</u>"
    parts = [
        f"Overall performance ({pct}) on the test requests"
        + (f" ({'; '.join(requests)})" if requests else "") + f", {tex(_seed_text(table))}.",
        f"Best in {bold}, strongest baseline {under}; {tex(MISSING_TEX if latex else MISSING_MD)}: not run.",
        f"{dagger}: {tex(table.names.get(table.treatment, table.treatment))} significantly better than the "
        f"strongest baseline of the column ({TEST_NAMES[table.test][1 if latex else 0]} over test requests "
        f"on seed-averaged per-request values, Holm-corrected over the {n_tests} tested columns, {alpha}).",
        f"{IMPROVEMENT}: relative gain of the best DNR variant over the best baseline.",
        f"Candidate lists: fill policy {tex(fills)}.",
    ]
    derived = [table.names[m] for m in table.rank_derived.index if table.rank_derived.loc[m].any()]
    if derived:
        parts.append(f"{section}: AUC derived from the emitted order (rank-derived), not from scores: "
                     f"{tex(', '.join(derived))}.")
    subs = [f"{dataset_name(d)} is {SUBSTITUTES[d]}" for d in table.datasets
            if d in SUBSTITUTES and not SUBSTITUTES[d].startswith("same data")]
    if subs:
        parts.append(f"Substitute data: {tex('; '.join(subs))}.")
    return " ".join(parts)


_TEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                "–": "--", "—": "---", "α": "$\\alpha$", "×": "$\\times$", "Δ": "$\\Delta$",
                "≥": "$\\geq$", "≤": "$\\leq$", "†": "$^{\\dagger}$", "§": "\\S{}", "−": "$-$",
                "±": "$\\pm$", "…": "\\ldots{}", "ε": "$\\varepsilon$", "λ": "$\\lambda$", "→": "$\\to$",
                "τ": "$\\tau$"}


def _escape(text: str) -> str:
    """Plain text as LaTeX source."""
    return "".join(_TEX_SPECIAL.get(c, c) for c in text)


# ------------------------------------------------------------------------------------------------
# renderers


def _improvement_text(value: float, latex: bool) -> str:
    if pd.isna(value):
        return MISSING_TEX if latex else MISSING_MD
    return f"{value:+.1f}" + ("\\%" if latex else "%")


def _cell_marks(table: Table1, method: str, col, latex: bool) -> str:
    marks = ""
    if table.dagger.loc[method, col]:
        marks += "$^{\\dagger}$" if latex else "†"
    if table.rank_derived.loc[method, col]:
        marks += "\\textsuperscript{\\S}" if latex else "§"
    return marks


def to_markdown(table: Table1) -> str:
    """GitHub Markdown via ``tabulate``: caption paragraph, then the table."""
    headers = ["Family", "Method", *(f"{dataset_name(d)} {m}" for d, m in table.values.columns)]
    body = []
    previous = None
    for method in table.values.index:
        family = table.families[method]
        row = [FAMILY_NAMES.get(family, family) if family != previous else "", table.names[method]]
        previous = family
        for col in table.values.columns:
            value = table.values.loc[method, col]
            if pd.isna(value):
                row.append(MISSING_MD)
                continue
            text = f"{value:.2f}"
            if table.underline.loc[method, col]:
                text = f"<u>{text}</u>"
            if table.bold.loc[method, col]:
                text = f"**{text}**"
            row.append(text + _cell_marks(table, method, col, latex=False))
        body.append(row)
    body.append(["", IMPROVEMENT, *(_improvement_text(v, False) for v in table.improvement)])
    grid = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True,
                    colalign=("left", "left", *("right",) * len(table.values.columns)))
    return f"{table.caption()}\n\n{grid}\n"


def to_latex(table: Table1) -> str:
    """A ``table*`` for the paper (booktabs + graphicx in the preamble), via ``Styler.to_latex``."""
    columns = pd.MultiIndex.from_tuples([(_escape(dataset_name(d)), m) for d, m in table.values.columns])
    index = [_escape(n) for n in table.names] + [IMPROVEMENT]
    cells = pd.DataFrame(MISSING_TEX, index=index, columns=columns, dtype=object)
    props = pd.DataFrame("", index=index, columns=columns, dtype=object)
    for i, method in enumerate(table.values.index):
        for j, col in enumerate(table.values.columns):
            value = table.values.loc[method, col]
            if pd.isna(value):
                continue
            cells.iat[i, j] = f"{value:.2f}" + _cell_marks(table, method, col, latex=True)
            style = ("textbf:--rwrap;" if table.bold.loc[method, col] else "") + \
                    ("underline:--rwrap;" if table.underline.loc[method, col] else "")
            props.iat[i, j] = style
    cells.iloc[-1] = [_improvement_text(v, True) for v in table.improvement]
    n_cols = len(columns)
    text = cells.style.apply(lambda _: props, axis=None).to_latex(
        hrules=True, multicol_align="c", column_format="l" + "c" * n_cols, environment="table*",
        position="t", caption=table.caption(latex=True), label=table.label, position_float="centering")
    return _post_process(text, table)


def _post_process(text: str, table: Table1) -> str:
    """Add what Styler does not emit: cmidrules under dataset headers, family midrules, resizebox."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "\\multicolumn" in line)
    width = len(METRICS)
    rules = "".join(f"\\cmidrule(lr){{{2 + k * width}-{1 + (k + 1) * width}}}" for k in range(len(table.datasets)))
    lines.insert(header + 1, rules)
    first_body = lines.index("\\midrule", header) + 1
    # one body line per method row, then the Improv. row; a rule before each new family and Improv.
    breaks = [i for i in range(1, len(table.families)) if table.families.iloc[i] != table.families.iloc[i - 1]]
    breaks.append(len(table.families))
    for offset in sorted(breaks, reverse=True):
        lines.insert(first_body + offset, "\\midrule")
    start = next(i for i, line in enumerate(lines) if line.startswith("\\begin{tabular}"))
    end = next(i for i, line in enumerate(lines) if line.startswith("\\end{tabular}"))
    lines[end] = lines[end] + "}"
    lines[start:start] = ["\\resizebox{\\textwidth}{!}{%", "\\setlength{\\tabcolsep}{3pt}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# structural check


def _strip_escapes(text: str) -> str:
    return re.sub(r"\\[{}&%$#_]", "", text)


def check_latex(text: str) -> None:
    """Raise ValueError unless the table is structurally sound: ASCII only, balanced braces and
    ``\\begin``/``\\end``, the booktabs rules in order, and every tabular row exactly as wide as the
    column spec (``\\multicolumn`` spans counted)."""
    plain = _strip_escapes(re.sub(r"(?<!\\)%.*", "", text))  # comments out, escaped specials out
    # pdflatex's default input encoding stops at characters it has no definition for (U+2212 did)
    foreign = sorted({c for c in text if ord(c) > 127})
    if foreign:
        raise ValueError(f"characters pdflatex cannot typeset without extra packages: {foreign}; "
                         "add them to tables._TEX_SPECIAL")
    depth = 0
    for k, char in enumerate(plain):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            raise ValueError(f"unbalanced '}}' near: {plain[max(0, k - 40):k + 1]!r}")
    if depth:
        raise ValueError(f"{depth} unclosed '{{'")
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", plain):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            raise ValueError(f"\\end{{{env}}} does not close the innermost open environment")
    if stack:
        raise ValueError(f"unclosed environments: {stack}")
    positions = [plain.find(rule) for rule in ("\\toprule", "\\midrule", "\\bottomrule")]
    if -1 in positions or positions != sorted(positions):
        raise ValueError("booktabs rules missing or out of order (\\toprule, \\midrule, \\bottomrule)")
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", plain)
    if not spec:
        raise ValueError("no tabular environment")
    n_cols = len(re.findall(r"[lcr]", spec.group(1)))
    body = plain[spec.end():plain.index("\\end{tabular}")]
    for line in body.splitlines():
        line = line.strip()
        if not line.endswith("\\\\"):
            if "&" in line:
                raise ValueError(f"a row without a closing \\\\: {line!r}")
            continue
        cells = line[:-2].split("&")
        span = sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", cell)) else 1 for cell in cells)
        if span != n_cols:
            raise ValueError(f"row spans {span} columns, the tabular has {n_cols}: {line!r}")
