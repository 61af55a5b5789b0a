"""The paper's published numbers (benchmark/paper) round-trip against the paper's text."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.paper import PAPER_COLUMN, paper_numbers, paper_value

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "dnr-paper.txt"
METRICS = ["H@6", "N@6", "M@6", "F1@6", "AUC"]


@pytest.fixture(scope="module")
def paper_rows():
    assert PAPER.exists(), f"the paper text is expected beside the checkout at {PAPER}"
    rows = []
    for line in PAPER.read_text().splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append([c for c in cells if c != ""])
    return rows


def test_spot_values_from_the_paper():
    assert paper_value("1", "pier", "ml-1m", "AUC") == 90.43
    assert paper_value("1", "dnr-b", "kuairand", "N@6") == 70.15  # Kuaivideo column
    assert paper_value("2", "pier-w-score", "amazon-books", "H@6", backbone="pier") == 72.03
    assert paper_value("3", "dnr-g-no-reg", "ml-1m", "H@6") == 63.47
    assert paper_value("9", "dnr-bl", "kuairand", "M@6") == 59.61
    assert paper_value("10", "dnr-large", "ml-1m", "N@6") == 78.72
    assert paper_value("8", "retriever", "ml-1m", "retriever AUC") == 79.20
    assert paper_value("12", "dcdr", "kuairand", "sec/epoch") == 4 * 60 + 58
    assert paper_value("1", "pier", "ml-100k", "AUC") is None  # the paper has no such column


@pytest.mark.parametrize("table", ["1", "2", "3"])
def test_every_row_of_the_main_tables_is_a_row_of_the_paper(table, paper_rows):
    frame = paper_numbers(table)
    for (backbone, row, method), part in frame.groupby(["backbone", "paper_row", "method"], sort=False):
        values = [f"{float(part[(part.dataset == d) & (part.metric == m)].value.iloc[0]):.2f}"
                  for d in ("ml-1m", "kuaivideo", "book") for m in METRICS]
        printed = [r[1:] for r in paper_rows if r and r[0] == row]
        as_text = [[f"{float(v):.2f}" for v in r] for r in printed if len(r) == 15]
        assert values in as_text, (table, row, method)


def test_table_sizes_and_columns():
    frame = paper_numbers()
    assert set(frame["dataset"]) == set(PAPER_COLUMN.values())
    assert len(paper_numbers("1")) == 15 * 3 * 5  # 15 methods, 3 datasets, 5 metrics
    assert len(paper_numbers("2")) == 10 * 3 * 5
    assert len(paper_numbers("3")) == 9 * 3 * 5
    assert paper_numbers("1")["value"].between(0, 100).all()


def test_summary_sets_our_numbers_beside_the_papers():
    import pandas as pd

    from benchmark.summary import paper_comparison

    frame = pd.DataFrame([
        {"dataset": "ml-1m", "method": "prm", "seed": s, "H@6": 0.1 + s / 100, "N@6": 0.2, "M@6": 0.3,
         "F1@6": 0.4, "AUC": 0.5} for s in range(3)] + [
        {"dataset": "ml-1m", "method": "prm-c-score", "seed": 0, "H@6": 0.1, "N@6": 0.2, "M@6": 0.3,
         "F1@6": 0.4, "AUC": 0.5},
        {"dataset": "ml-1m", "method": "random", "seed": 0, "H@6": 0.1, "N@6": 0.2, "M@6": 0.3,
         "F1@6": 0.4, "AUC": 0.5}])
    beside = paper_comparison(frame).set_index("method")
    assert "random" not in beside.index  # the paper has no random row
    assert beside.loc["prm", "H@6 ours"] == 11.0 and beside.loc["prm", "H@6 paper"] == 60.09
    assert beside.loc["prm", "n"] == 3 and beside.loc["prm", "table"] == "1"
    assert beside.loc["prm-c-score", "table"] == "2" and beside.loc["prm-c-score", "AUC paper"] == 91.35
