"""Tables 2, 3, 8, 9, 10, 12, paper-versus-measured and the report command, on synthetic records.

Each method's per-request vector is ``level + [w, -w]`` (mean exactly ``level``), so every cell is
a known number, and a method whose level is 5 points above another's with small noise is
significantly better, while one that *is* another's vector gives p = 1.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from benchmark import paper_tables, report, store, tables
from benchmark.errors import UserInputError
from benchmark.store import RunSpec
from benchmark.summary import METRICS, records_frame

N = 120
LEVELS = {  # ×100, same level for every metric; seconds per epoch
    "ml-1m": {"retriever": (60.0, 0.5), "prm": (50.0, 10.0), "prm-c-score": (52.0, 11.0), "dnr-b": (57.0, 12.0),
              "pier": (55.0, 20.0), "dnr-pier": (55.0, 24.0), "dnr-bl": (58.0, 12.5),
              "dnr-g": (56.0, 11.0), "dnr-g-no-adv": (54.0, 11.0)},
    "kuairand": {"retriever": (70.0, 0.5), "prm": (40.0, 30.0), "dnr-b": (46.0, 33.0)},
}
SAME_AS = {("ml-1m", "dnr-pier"): "pier"}  # DNR on PIER *is* PIER there: p = 1, no dagger


def _vectors(dataset: str, method: str, cache: dict) -> dict[str, np.ndarray]:
    if (dataset, method) in SAME_AS:
        return cache[(dataset, SAME_AS[(dataset, method)])]
    rng = np.random.default_rng(zlib.crc32(f"{dataset}/{method}".encode()))
    level = LEVELS[dataset][method][0] / 100
    out = {}
    for metric in METRICS:
        w = rng.normal(0, 0.01, N // 2)
        out[metric] = level + np.concatenate([w, -w])
    cache[(dataset, method)] = out
    return out


def write_records(root) -> None:
    cache: dict = {}
    for dataset, methods in LEVELS.items():
        for method, (_, seconds) in methods.items():
            vectors = _vectors(dataset, method, cache)
            record = {"status": "ok", "config_hash": "h",
                      "config": {"profile": "paper", "data": {"fill": "score_matched"},
                                 "train": {"batch_size": 256, "patience": 10, "min_patience_steps": 150,
                                           "max_epochs": 200}},
                      "data": {"train_requests_used": 4937}, "epochs_run": 3, "best_epoch": 2, "seconds_per_epoch": seconds, "rank_derived_auc": False,
                      "metrics": {"test": {m: float(np.mean(v)) for m, v in vectors.items()}}}
            store.write_record(root, RunSpec(dataset, method, 0), record,
                               {"request_id": np.arange(N), **vectors})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    write_records(root)
    return root


DATASETS = ["ml-1m", "kuairand"]


def test_table2_values_groups_bold_and_dagger(results):
    grid = paper_tables.metric_grid(results, DATASETS, paper_tables.LAYOUTS["table2"])
    # rows never run are left out and named in the caption
    assert list(grid.cells.index) == ["prm", "prm-c-score", "dnr-b", "pier", "dnr-pier"]
    assert "Not run yet, so left out: + score (PRM backbone)" in grid.caption_md
    assert grid.values.loc["prm-c-score", ("ml-1m", "N@6")] == pytest.approx(52.0)
    assert grid.values.loc["prm-c-score"].xs("kuairand", level="dataset").isna().all()
    assert grid.cells.loc["prm-c-score", ("kuairand", "AUC")] == ""
    # bold within each backbone group
    assert grid.bold.loc["dnr-b", ("ml-1m", "H@6")] and grid.bold.loc["pier", ("ml-1m", "H@6")]
    assert grid.bold.loc["dnr-pier", ("ml-1m", "H@6")]  # a tie with PIER: both bold
    assert not grid.bold.loc["prm-c-score"].any()
    # dagger: DNR-B beats its group's strongest other row (c score on ML-1M, PRM on KuaiRand) everywhere;
    # DNR on PIER equals PIER (p = 1)
    tests = grid.tests.set_index(["method", "dataset", "metric"])
    assert tests.loc[("dnr-b", "ml-1m", "N@6"), "comparator"] == "prm-c-score"
    assert tests.loc[("dnr-b", "kuairand", "N@6"), "comparator"] == "prm"
    assert tests.loc[("dnr-pier", "ml-1m", "N@6"), "p_value"] == 1.0
    assert len(grid.tests) == 15 and grid.dagger.loc["dnr-b"].all() and not grid.dagger.loc["dnr-pier"].any()
    assert tests.loc[("dnr-b", "ml-1m", "AUC"), "difference"] == pytest.approx(5.0)


def test_table3_bolds_over_the_whole_table(results):
    grid = paper_tables.metric_grid(results, DATASETS, paper_tables.LAYOUTS["table3"])
    assert list(grid.cells.index) == ["prm", "dnr-g", "dnr-g-no-adv", "dnr-b"]
    assert grid.bold.loc["dnr-b", ("ml-1m", "N@6")] and not grid.bold.loc["dnr-g", ("ml-1m", "N@6")]
    assert grid.bold.loc["dnr-b", ("kuairand", "N@6")] and not grid.bold.loc["prm", ("kuairand", "N@6")]
    # DNR-G is tested against its one ablation that ran; DNR-B has none here
    assert set(grid.tests["method"]) == {"dnr-g"} and set(grid.tests["comparator"]) == {"dnr-g-no-adv"}
    assert grid.dagger.loc["dnr-g", ("ml-1m", "N@6")]


def test_tables_without_their_defining_rows_are_not_built(results):
    assert paper_tables.metric_grid(results, DATASETS, paper_tables.LAYOUTS["table10"]) is None
    grid9 = paper_tables.metric_grid(results, DATASETS, paper_tables.LAYOUTS["table9"])
    assert list(grid9.cells.columns.get_level_values("column").unique()) == ["N@6", "M@6"]
    assert grid9.dagger.loc["dnr-bl", ("ml-1m", "N@6")]  # 58 vs 57 with small noise


def test_table8_and_table12(results):
    t8 = paper_tables.retriever_table(results, DATASETS)
    assert t8.values.loc["retriever", ("ml-1m", "AUC")] == pytest.approx(60.0)
    assert t8.values.loc["paper", ("ml-1m", "AUC")] == 79.20 and t8.values.loc["paper", ("kuairand", "AUC")] == 89.62
    t12 = paper_tables.epoch_table(results, DATASETS)
    assert list(t12.cells.index) == ["prm", "pier", "prm-c-score", "dnr-b"]
    assert t12.values.loc["pier", ("ml-1m", "×PRM")] == pytest.approx(2.0)
    assert t12.values.loc["pier", ("ml-1m", "paper ×PRM")] == pytest.approx(114 / 61)
    assert t12.values.loc["prm-c-score", ("ml-1m", "paper ×PRM")] == pytest.approx(63 / 61)  # the 'w/ score' row
    assert t12.values.loc["dnr-b", ("kuairand", "×PRM")] == pytest.approx(1.1)
    assert t12.cells.loc["dnr-b", ("kuairand", "s/epoch")] == "33.0"
    assert "more than one host/device/thread setting" not in t12.caption_md  # no environments: one setting


def test_table12_names_columns_timed_in_more_than_one_setting(tmp_path):
    """PRM on a CPU, DNR-B on a shared GPU: the ratio mixes two machines, and the caption says so."""
    for method, device in (("prm", "cpu"), ("dnr-b", "cuda:0")):
        record = {"status": "ok", "config_hash": "h",
                  "config": {"profile": "paper", "data": {"fill": "score_matched"}, "train": {}},
                  "epochs_run": 2, "best_epoch": 1, "seconds_per_epoch": 5.0, "rank_derived_auc": False,
                  "history": [{"stage": "main", "epoch": e, "seconds": 5.0} for e in (1, 2)],
                  "environment": {"host": "box", "device": device, "torch_threads": 1},
                  "metrics": {"test": {m: 0.5 for m in METRICS}}}
        store.write_record(tmp_path, RunSpec("ml-1m", method, 0), record)
    t12 = paper_tables.epoch_table(tmp_path, ["ml-1m"])
    assert t12.values.loc["dnr-b", ("ml-1m", "×PRM")] == pytest.approx(1.0)
    assert "not comparable row to row: ML-1M (2)." in t12.caption_md


def test_paper_vs_measured_one_row_per_published_row(results):
    grid = paper_tables.paper_vs_measured(results, DATASETS)
    names = list(grid.names)
    # DNR-B's published numbers repeat in Tables 1, 2, 3 and (N@6, M@6) 9: one row
    assert "DNR-B (T1,2,3,9; 1 seed)" in names
    assert sum(n.startswith("DNR-B (") for n in names) == 2  # ML-1M and KuaiRand
    assert "G w/o [dnr-g-no-adv] (T3; 1 seed)" in names  # the paper prints two rows as "G w/o"
    row = next(k for k, n in grid.names.items() if n.startswith("DNR-B (") and k.startswith("ml-1m"))
    assert grid.values.loc[row, ("N@6", "Paper")] == 77.12
    assert grid.values.loc[row, ("N@6", "Ours")] == pytest.approx(57.0)
    assert grid.values.loc[row, ("N@6", "Δ")] == pytest.approx(57.0 - 77.12)
    assert grid.cells.loc[row, ("N@6", "Δ")] == "-20.12"
    retr = next(k for k, n in grid.names.items() if n.startswith("MF retriever") and k.startswith("ml-1m"))
    assert grid.values.loc[retr, ("AUC", "Paper")] == 79.20 and pd.isna(grid.values.loc[retr, ("N@6", "Paper")])
    assert any(n.startswith("DNR on PIER") for n in names)  # Table 2's PIER-backbone row
    assert set(grid.groups.str.split(":").str[0]) == {"ML-1M", "KuaiRand"}


def test_renderers(results):
    for grid in paper_tables.build_all(results, DATASETS):
        latex = paper_tables.to_latex(grid)
        tables.check_latex(latex)  # also run inside to_latex; here it must not raise either
        assert "\\toprule" in latex and f"\\label{{tab:{grid.key}}}" in latex and "%)" not in latex.replace("\\%)", "")
        md = paper_tables.to_markdown(grid)
        assert md.startswith(f"**{grid.title}.**")
    t2 = paper_tables.metric_grid(results, DATASETS, paper_tables.LAYOUTS["table2"])
    md = paper_tables.to_markdown(t2)
    assert "| PRM backbone " in md and "**57.00**†" in md and "| –" in md
    latex = paper_tables.to_latex(t2)
    assert "\\multicolumn{11}{l}{\\textit{PIER backbone}} \\\\" in latex
    assert "\\textbf{57.00$^{\\dagger}$}" in latex and "\\cmidrule(lr){2-6}\\cmidrule(lr){7-11}" in latex


def test_report_writes_tables_index_and_is_deterministic(results, tmp_path):
    first = report.build(results, tmp_path / "a", figures=False, argv=["--results-dir", "R"])
    report.build(results, tmp_path / "b", figures=False, argv=["--results-dir", "R"])
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in first.files)
    assert "tables/table1.tex" in names and "tables/table2.md" in names and "README.md" in names
    assert "tables/table1_all_baselines.csv" in names and "tables/paper_vs_measured.tex" in names
    assert first.skipped["table10"].startswith("no finished run of prm-large, dnr-large")
    for path in first.files:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert twin.read_bytes() == path.read_bytes(), path
    index = (tmp_path / "a" / "README.md").read_text()
    assert "`python -m benchmark.report --results-dir R`" in index
    assert "[table2](tables/table2.md) ([LaTeX](tables/table2.tex))" in index and "- table10: no finished run" in index
    assert "- [table1_seed_std](tables/table1_seed_std.md)\n" in index  # no LaTeX of it: no dead link
    assert "tables/table1_seed_tests.md" in names and "tables/table1_seed_tests.csv" in names
    assert "NOTES.md" not in index and "`pdflatex tables.tex`" in index
    assert "kept their first epoch" not in index  # every synthetic run's best epoch is 2
    covered = index.split("## Not covered yet", 1)[1].split("## Tables", 1)[0]
    kuairand = next(line for line in covered.splitlines() if line.startswith("- KuaiRand: "))
    assert "not run: " in kuairand and "sasrec" in kuairand and "pier" in kuairand
    assert "fewer than 3 seeds: " in kuairand and "prm (1)" in kuairand and "dnr-b (1)" in kuairand
    assert "--plan --methods all" in covered
    (tmp_path / "a" / "NOTES.md").write_text("how the runs were made")
    again = report.build(results, tmp_path / "a", figures=False)
    assert "[NOTES.md](NOTES.md)" in (tmp_path / "a" / "README.md").read_text() and again.skipped == first.skipped
    assert ("| ML-1M | same data (MovieLens-1M, 20-core) | 9 | 1 | paper | score_matched "
            "| batch size 256, patience 10 epochs (200 steps) | 9 |") in index
    family = pd.read_csv(tmp_path / "a" / "tables" / "table1_all_baselines.csv")
    # DNR-B against Table 1's baselines (PRM and PIER on ML-1M, PRM on KuaiRand; score variants are not
    # Table 1 rows), on 5 metrics: one Holm family of 15
    dnr_b = family[family["treatment"] == "dnr-b"]
    assert len(dnr_b) == 15 and (dnr_b["family_size"] == 15).all()
    assert set(dnr_b["control"]) == {"prm", "pier"} and set(family["treatment"]) == {"dnr-b", "dnr-g"}
    assert (dnr_b["p_adjusted"] >= dnr_b["p_value"]).all()


def test_index_names_runs_that_kept_their_first_epoch(results, tmp_path):
    frame = records_frame(results)
    frame.loc[(frame["dataset"] == "kuairand") & (frame["method"] == "prm"), "best_epoch"] = 1
    index = report.index_text(frame, DATASETS, tmp_path, [], {}, [])
    assert "Runs that kept their first epoch" in index and "KuaiRand: prm seed 0." in index


def test_report_bad_input(tmp_path, results, capsys):
    with pytest.raises(UserInputError, match="no finished runs"):
        report.build(tmp_path / "empty")
    with pytest.raises(UserInputError, match="amazon-books"):
        report.build(results, tmp_path / "x", datasets=["amazon-books"], figures=False)
    assert report.main(["--results-dir", str(tmp_path / "empty")]) == 2
    assert "error: no finished runs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_rank_agreement_with_the_paper():
    """Kendall's τ-b over the Table 1 rows only, per dataset, and only with 3 methods or more."""
    def row(d, slug, paper, ours, tables=("1",)):
        return {"dataset": d, "slug": slug, "tables": list(tables), "published": {"N@6": paper}, "ours": {"N@6": ours}}

    rows = [row("ml-1m", "a", 50, 10), row("ml-1m", "b", 60, 20), row("ml-1m", "c", 70, 30),
            row("ml-1m", "d", 80, 0, tables=("2",)),  # not a Table 1 row: left out
            row("kuairand", "a", 50, 30), row("kuairand", "b", 60, 20), row("kuairand", "c", 70, 10),
            row("amazon-books", "a", 50, 10), row("amazon-books", "b", 60, 20)]  # 2 methods: no τ
    agreement = paper_tables.rank_agreement(rows)
    assert set(agreement) == {"ml-1m", "kuairand"}
    assert agreement["ml-1m"][0] == pytest.approx(1.0) and agreement["ml-1m"][2] == 3
    assert agreement["kuairand"][0] == pytest.approx(-1.0)
    text = paper_tables.rank_agreement_text(rows)
    assert "ML-1M τ = +1.00" in text and "KuaiRand τ = -1.00" in text and "3 methods" in text
    assert paper_tables.rank_agreement_text(rows[-2:]) == ""
    mixed = [row("ml-1m", "a", 50, 20), row("ml-1m", "b", 60, 10), row("ml-1m", "c", 70, 30)]
    assert "τ = +0.33 (p = 1.0, 3 methods)" in paper_tables.rank_agreement_text(mixed)  # two digits, not "p = 1"
    assert tables._escape(text).isascii() and "$\\tau$" in tables._escape(text)  # τ has a LaTeX spelling


def test_index_flags_mixed_protocols_and_short_patience(results, tmp_path):
    frame = records_frame(results)
    assert report.index_text(frame, DATASETS, tmp_path, [], {}, []).count("Mixed protocols") == 0
    kuai = frame["dataset"] == "kuairand"
    frame.loc[kuai, "train_settings"] = "batch size 2048, patience 10"
    frame.loc[kuai & (frame["method"] == "prm"), "train_settings"] = "batch size 256, patience 10"
    frame.loc[kuai, "patience_steps"] = 30
    frame.loc[kuai, "max_epochs"] = 200
    index = report.index_text(frame, DATASETS, tmp_path, [], {}, [])
    assert "**Mixed protocols.**" in index and "  - batch size 256, patience 10: prm" in index
    assert "| **mixed** (see below) |" in index
    assert "fewer than 150 optimiser steps" in index and "KuaiRand: dnr-b seed 0, prm seed 0" in index


def test_report_removes_its_own_files_that_the_records_no_longer_support(results, tmp_path):
    out = tmp_path / "out"
    (out / "tables").mkdir(parents=True)
    stale, kept = out / "tables" / "table10.md", out / "tables" / "notes.txt"
    stale.write_text("a Table 10 from records that are gone")
    kept.write_text("not the report's")
    report.build(results, out, figures=False)
    assert not stale.exists() and kept.exists() and (out / "tables" / "table1.md").exists()
