"""Table 1 builder and renderers, on synthetic records whose answers are known by construction.

Every per-request vector is ``level + noise`` with noise = [w, -w] (mean exactly 0), and seed 0 / 1
hold ``vector ± e``, so a method's seed mean is its level exactly and the cells are known numbers.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from benchmark import registry, store, tables
from benchmark.store import RunSpec
from benchmark.summary import METRICS

N = 200  # test requests
NAN_AT = (0, N // 2)  # requests without both classes: AUC is NaN there (a [w, -w] pair, so the mean stays)

# level ×100 per dataset, method, metric (H@6, N@6, M@6, F1@6, AUC)
LEVELS = {
    "ml-1m": {
        "retriever": (40.00, 50.00, 30.00, 45.00, 90.00),  # reference row: best AUC overall (bold, no underline)
        "sasrec": (55.00, 60.00, 45.00, 61.00, 80.00),  # F1: tied best baseline with PRM
        "prm": (58.00, 70.00, 48.00, 61.00, 82.00),  # N@6: best baseline, DNR-B equals it exactly
        "pier": (60.00, 66.00, 52.00, 59.00, 84.00),  # H@6, M@6, AUC best baseline; AUC rank-derived
        "diffurec": (57.00, 65.00, 47.00, 58.00, 81.00),
        "dnr-b": (65.00, 70.00, 50.00, 63.00, 85.00),  # M@6 significantly *worse* than PIER: no dagger
    },
    "kuairand": {
        "retriever": (20.00, 30.00, 20.00, 25.00, 70.00),
        "sasrec": (35.00, 50.00, 40.00, 42.00, 75.00),
        "prm": (40.00, 56.00, 43.00, 46.00, 85.00),
        "pier": (45.00, 65.00, 52.00, 53.00, 90.00),  # best baseline everywhere
        "dnr-b": (50.00, 70.00, 58.00, 59.00, 93.00),  # clearly better everywhere
    },  # diffurec not run here: its cells are missing
}
SAME_AS = {("ml-1m", "N@6"): "prm"}  # DNR-B's vector *is* PRM's there: p = 1


def _write_runs(root, dataset: str, method: str, seeds=(0, 1), fill: str = "score_matched") -> None:
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{method}".encode()))
    vectors = {}
    for metric, level in zip(METRICS, LEVELS[dataset][method]):
        w = rng.normal(0, 0.02, N // 2)
        vectors[metric] = level / 100 + np.concatenate([w, -w])
        if metric == "AUC":
            vectors[metric][list(NAN_AT)] = np.nan
    if method == "dnr-b":
        for (d, metric), other in SAME_AS.items():
            if d == dataset:
                vectors[metric] = _write_runs.cache[(d, other)][metric]
    _write_runs.cache[(dataset, method)] = vectors
    ids = np.arange(5000, 5000 + N)
    noise = rng.normal(0, 0.05, N)  # seed k adds +noise, -noise, ... (0 for the last of an odd count)
    for k, seed in enumerate(seeds):
        e = noise * (0 if k == len(seeds) - 1 and len(seeds) % 2 else (1 if k % 2 == 0 else -1))
        order = rng.permutation(N)
        per_request = {"request_id": ids[order], **{m: (v + e)[order] for m, v in vectors.items()}}
        record = {"status": "ok", "config_hash": "h",
                  "config": {"profile": "paper", "data": {"fill": fill}},
                  "epochs_run": 3, "best_epoch": 2, "seconds_per_epoch": 1.0,
                  "rank_derived_auc": method == "pier",
                  "metrics": {"test": {m: float(np.nanmean(per_request[m])) for m in METRICS}}}
        store.write_record(root, RunSpec(dataset, method, seed), record, per_request)


_write_runs.cache = {}
ORDERED = ["retriever", "sasrec", "prm", "pier", "diffurec", "dnr-b"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for dataset, methods in LEVELS.items():
        for method in methods:
            _write_runs(root, dataset, method)
    return root


@pytest.fixture(scope="module")
def table(results):
    return tables.table1(results, ["ml-1m", "kuairand"], methods=["dnr-b", "pier", "sasrec", "diffurec",
                                                                  "retriever", "prm"])


def cell(frame: pd.DataFrame, method: str, dataset: str, metric: str):
    return frame.loc[method, (dataset, metric)]


def test_rows_grouped_by_family_and_values_are_the_seed_means(table):
    assert list(table.values.index) == ORDERED  # reference first, then the paper's family order, DNR last
    assert table.families.tolist() == ["reference", "sequential", "list-refinement", "generator-evaluator",
                                       "diffusion", "dnr"]
    for dataset, methods in LEVELS.items():
        for method, levels in methods.items():
            for metric, level in zip(METRICS, levels):
                assert cell(table.values, method, dataset, metric) == pytest.approx(level, abs=1e-9)
    assert table.values.loc["diffurec", "kuairand"].isna().all()  # not run: NaN, never 0
    assert (table.seeds.loc[ORDERED, "ml-1m"] == 2).all() and table.seeds.loc["diffurec", "kuairand"] == 0


def test_default_methods_are_those_with_runs(results):
    auto = tables.table1(results, ["ml-1m", "kuairand"])
    assert list(auto.values.index) == ORDERED


def test_every_registered_method_has_its_own_display_name():
    """Figures and tables never fall back to a bare slug for a method the suite ships."""
    names = {slug: tables.method_name(slug) for slug in registry.available()}
    assert [slug for slug, name in names.items() if name == slug] == []
    assert len(set(names.values())) == len(names)  # no two methods share a label
    assert names["pier-plus-score"] == "PIER + score" and names["dnr-pier"] == "DNR-B on PIER"
    assert tables.method_name("my-reranker") == "my-reranker"  # an unknown slug is shown as given


def test_bold_marks_the_best_row_with_ties_and_references_included(table):
    bold = {(d, m): sorted(table.bold.index[table.bold[(d, m)]]) for d, m in table.bold.columns}
    assert bold[("ml-1m", "H@6")] == ["dnr-b"]
    assert bold[("ml-1m", "N@6")] == ["dnr-b", "prm"]  # a tie on the displayed value: both bold
    assert bold[("ml-1m", "M@6")] == ["pier"]
    assert bold[("ml-1m", "AUC")] == ["retriever"]
    assert all(bold[("kuairand", m)] == ["dnr-b"] for m in METRICS)


def test_underline_marks_the_best_baseline_only(table):
    under = {(d, m): sorted(table.underline.index[table.underline[(d, m)]]) for d, m in table.underline.columns}
    assert under[("ml-1m", "H@6")] == ["pier"]
    assert under[("ml-1m", "N@6")] == ["prm"]  # DNR-B ties it but is not a baseline
    assert under[("ml-1m", "F1@6")] == ["prm", "sasrec"]  # tied baselines
    assert under[("ml-1m", "AUC")] == ["pier"]  # the retriever is a reference row, not a baseline
    assert all(under[("kuairand", m)] == ["pier"] for m in METRICS)
    assert not table.underline.loc[["retriever", "dnr-b"]].to_numpy().any()
    assert not table.bold.loc["diffurec", "kuairand"].any() and not table.underline.loc["diffurec", "kuairand"].any()


def test_dagger_only_where_dnr_is_significantly_better_after_holm(table):
    daggered = {col for col in table.dagger.columns if table.dagger.loc["dnr-b", col]}
    expected = {("ml-1m", m) for m in ("H@6", "F1@6", "AUC")} | {("kuairand", m) for m in METRICS}
    assert daggered == expected  # not N@6 (equal vectors, p = 1) nor M@6 (significantly worse)
    assert not table.dagger.drop(index="dnr-b").to_numpy().any()
    t = table.tests.set_index(["dataset", "metric"])
    assert len(t) == 10 and t.loc[("ml-1m", "N@6"), "p_value"] == 1.0
    assert t.loc[("ml-1m", "M@6"), "p_adjusted"] < 0.05 and t.loc[("ml-1m", "M@6"), "difference"] < 0
    assert t.loc[("ml-1m", "N@6"), "comparator"] == "prm" and t.loc[("ml-1m", "H@6"), "comparator"] == "pier"
    assert t.loc[("ml-1m", "AUC"), "n"] == N - len(NAN_AT) and t.loc[("ml-1m", "H@6"), "n"] == N
    # one Holm family over all tested columns
    np.testing.assert_allclose(table.tests["p_adjusted"], multipletests(table.tests["p_value"], method="holm")[1])


def test_alpha_is_used(results):
    strict = tables.table1(results, ["ml-1m", "kuairand"], methods=ORDERED, alpha=1e-300)
    assert not strict.dagger.to_numpy().any()
    assert "$\\alpha=1e-300$" in strict.caption(latex=True)


def test_improvement_row(table):
    imp = table.improvement
    assert imp[("ml-1m", "H@6")] == pytest.approx(100 * (65 - 60) / 60)
    assert imp[("ml-1m", "N@6")] == pytest.approx(0, abs=1e-9)
    assert imp[("ml-1m", "M@6")] == pytest.approx(100 * (50 - 52) / 52)
    assert imp[("ml-1m", "AUC")] == pytest.approx(100 * (85 - 84) / 84)  # vs the best *baseline*, not the retriever
    assert imp[("kuairand", "H@6")] == pytest.approx(100 * 5 / 45)


def test_rank_derived_auc_is_marked(table):
    assert table.rank_derived.loc["pier", ("ml-1m", "AUC")] and table.rank_derived.loc["pier", ("kuairand", "AUC")]
    assert table.rank_derived.to_numpy().sum() == 2
    assert "<u>84.00</u>§" in to_md_row(table, "Pier") and "\\textsuperscript{\\S}" in tables.to_latex(table)
    assert "rank-derived" in table.caption() and "Pier" in table.caption().split("rank-derived")[1]


def to_md_row(table, name: str) -> str:
    return next(line for line in tables.to_markdown(table).splitlines() if f"| {name} " in line)


def test_caption_states_test_correction_alpha_fill_seeds_and_substitutes(table):
    text = table.caption()
    for needle in ("two-sided paired Student's t-test", "Holm-corrected over the 10 tested columns",
                   "α = 0.05", "score_matched", "mean of 2 seeds per method", "ML-1M: 200", "KuaiRand: 200",
                   "KuaiRand is KuaiRand-Pure window standing in for the paper's proprietary Kuaivideo"):
        assert needle in text, needle
    assert "ML-1M is" not in text  # same data: no substitution note
    latex = table.caption(latex=True)
    assert "$\\alpha=0.05$" in latex and "score\\_matched" in latex and "$^{\\dagger}$" in latex


def test_caption_lists_uneven_seeds_and_other_test(tmp_path):
    for dataset in ("ml-1m",):
        for method in ("sasrec", "prm", "dnr-b"):
            _write_runs(tmp_path, dataset, method, seeds=(0, 1, 2) if method == "dnr-b" else (0, 1), fill="random")
    t = tables.table1(tmp_path, ["ml-1m"], test="randomisation")
    assert "SASRec 2, PRM 2, DNR-B 3" in t.caption() and "fill policy ML-1M: random" in t.caption()
    assert "randomisation (sign-flip) test" in t.caption()
    assert t.dagger.loc["dnr-b", ("ml-1m", "H@6")] and not t.dagger.loc["dnr-b", ("ml-1m", "N@6")]


def test_caption_seed_counts_keep_one_slot_per_dataset(tmp_path):
    # A method missing on one dataset must not shift its counts into another dataset's slot.
    for method, per_dataset in {"prm": (3, 2), "sasrec": (0, 3), "diffurec": (1, 0)}.items():
        for dataset, k in zip(("ml-1m", "kuairand"), per_dataset):
            if k:
                _write_runs(tmp_path, dataset, method, seeds=tuple(range(k)))
    t = tables.table1(tmp_path, ["ml-1m", "kuairand"])
    assert "seeds per method, ML-1M/KuaiRand: SASRec –/3, PRM 3/2, DiffuRec 1/–)" in t.caption()
    assert "SASRec --/3, PRM 3/2, DiffuRec 1/--" in t.caption(latex=True)


def test_markdown_snapshot(table):
    text = tables.to_markdown(table)
    lines = text.splitlines()
    assert lines[0] == table.caption()
    header = next(line for line in lines if line.startswith("| Family"))
    assert [h.strip() for h in header.split("|")[1:-1]] == [
        "Family", "Method", *(f"{d} {m}" for d in ("ML-1M", "KuaiRand") for m in METRICS)]
    cells = [c.strip() for c in to_md_row(table, "DNR-B").split("|")[1:-1]]
    assert cells == ["Ours", "DNR-B", "**65.00**†", "**70.00**", "50.00", "**63.00**†", "85.00†",
                     "**50.00**†", "**70.00**†", "**58.00**†", "**59.00**†", "**93.00**†"]
    cells = [c.strip() for c in to_md_row(table, "DiffuRec").split("|")[1:-1]]
    assert cells[2:] == ["57.00", "65.00", "47.00", "58.00", "81.00"] + ["–"] * 5
    cells = [c.strip() for c in to_md_row(table, "Pier").split("|")[1:-1]]
    assert cells[:4] == ["Generator-evaluator", "Pier", "<u>60.00</u>", "66.00"]
    assert cells[6] == "<u>84.00</u>§"
    cells = [c.strip() for c in to_md_row(table, "Improv.").split("|")[1:-1]]
    assert cells[2:7] == ["+8.3%", "+0.0%", "-3.8%", "+3.3%", "+1.2%"]
    assert "**<u>70.00</u>**" in to_md_row(table, "PRM")  # best overall (tie) and best baseline


def test_latex_snapshot_and_structure(table):
    text = tables.to_latex(table)
    tables.check_latex(text)
    lines = text.splitlines()
    assert lines[:4] == ["\\begin{table*}[t]", "\\centering", "\\caption{" + table.caption(latex=True) + "}",
                         "\\label{tab:main}"]
    assert " & \\multicolumn{5}{c}{ML-1M} & \\multicolumn{5}{c}{KuaiRand} \\\\" in lines
    assert "\\cmidrule(lr){2-6}\\cmidrule(lr){7-11}" in lines
    assert ("DNR-B & \\textbf{65.00$^{\\dagger}$} & \\textbf{70.00} & 50.00 & \\textbf{63.00$^{\\dagger}$} & "
            "85.00$^{\\dagger}$ & \\textbf{50.00$^{\\dagger}$} & \\textbf{70.00$^{\\dagger}$} & "
            "\\textbf{58.00$^{\\dagger}$} & \\textbf{59.00$^{\\dagger}$} & \\textbf{93.00$^{\\dagger}$} \\\\") in lines
    assert "DiffuRec & 57.00 & 65.00 & 47.00 & 58.00 & 81.00 & -- & -- & -- & -- & -- \\\\" in lines
    assert any(line.startswith("Pier & \\underline{60.00} & 66.00 & \\textbf{\\underline{52.00}} & 59.00 & "
                               "\\underline{84.00\\textsuperscript{\\S}} &") for line in lines)
    assert any(line.startswith("PRM & 58.00 & \\textbf{\\underline{70.00}} &") for line in lines)
    assert any(line.startswith("Improv. & +8.3\\% & +0.0\\% & -3.8\\% &") for line in lines)
    # a rule before every new family (5 boundaries among 6 rows) and before Improv.; one after the header
    body = lines[lines.index("\\toprule"):lines.index("\\bottomrule")]
    assert body.count("\\midrule") == 1 + 5 + 1
    assert lines[lines.index("Improv. & +8.3\\% & +0.0\\% & -3.8\\% & +3.3\\% & +1.2\\% & +11.1\\% & +7.7\\% & "
                             "+11.5\\% & +11.3\\% & +3.3\\% \\\\") - 1] == "\\midrule"


@pytest.mark.parametrize("broken, message", [
    (lambda t: t.replace("\\textbf{65.00", "\\textbf{65.00{", 1), "unclosed"),
    (lambda t: t.replace("DiffuRec & 57.00 & ", "DiffuRec & ", 1), "spans 10 columns"),
    (lambda t: t.replace("\\end{table*}", "\\end{table}"), "innermost"),
    (lambda t: t.replace("\\bottomrule", ""), "booktabs"),
    (lambda t: t.replace("+8.3", "\u22128.3", 1), "pdflatex cannot typeset"),  # U+2212 stopped pdflatex once
])
def test_check_latex_catches_broken_tables(table, broken, message):
    text = tables.to_latex(table)
    tables.check_latex(text)
    with pytest.raises(ValueError, match=message):
        tables.check_latex(broken(text))


def test_seed_level_appendix_pairs_each_dnr_row_with_the_column_s_strongest_baseline(results, table):
    from benchmark import report
    from benchmark.summary import records_frame

    assert table.strongest_baseline("kuairand", "N@6") == "pier"
    assert table.strongest_baseline("ml-1m", "F1@6") == "sasrec"  # tied with PRM exactly: the first in row order
    tests = report.seed_tests(records_frame(results), table)
    assert len(tests) == 2 * len(METRICS)  # one DNR row, every column of both datasets
    row = tests[(tests["dataset"] == "kuairand") & (tests["metric"] == "N@6")].iloc[0]
    # seeds 0 and 1 are level ± a method's own noise mean, so their mean difference is the level gap
    assert (row["dnr"], row["vs"], row["seeds"], row["won"], row["lost"]) == ("dnr-b", "pier", 2, 2, 0)
    assert row["difference"] == pytest.approx(70.0 - 65.0) and row["dnr_mean"] == pytest.approx(70.0)
    assert 0 < row["p_value"] < 1
    text = report.seed_tests_text(tests, table)
    assert text.startswith("**Table 1, seed-level tests.**")
    assert "| KuaiRand  | N@6      | DNR-B | Pier                 | 2       | 70.00 | 65.00      | +5.00 | 2/2" in text
    assert not tests["constant"].any() and "Δ equal |" not in text
    # a difference equal at every seed has no p (stats.seed_level): the cell says so instead of "–"
    equal = tests.copy()
    equal.loc[row.name, ["p_value", "constant"]] = [float("nan"), True]
    line = next(x for x in report.seed_tests_text(equal, table).splitlines() if x.startswith("| KuaiRand  | N@6 "))
    assert line.rstrip().endswith("| Δ equal     |")
