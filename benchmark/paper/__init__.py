"""The DNR paper's published numbers, as data (transcribed from ``../shared/paper/dnr-paper.txt``).

``dnr_paper_numbers.csv`` holds one row per published cell: the paper's table number, the
backbone (Table 2 only), the row name as printed, our method slug, the paper's dataset column,
the metric and the value (×100 for H/N/M/F1@6 and AUC; seconds for Table 12's per-epoch times;
Table 8 is the retriever's AUC in %). Row mapping notes:

* Table 2's "DNR" rows are DNR-B on PRM (identical to Table 1's DNR-B) and ``dnr-pier`` on PIER.
* Table 3's ablation rows lost their symbols in the text ("G w/o", "G w/o"); they are, in
  order, w/o L_adv then w/o L_x (the first "B w/o" row equals "w/ B", which methods.md §6.11
  attributes to a copy error in the paper, so the order is the paper's printed one).
* Table 10's "original PRM+DNR" is the DNR-G row of Table 1, so the larger pair maps to
  ``prm-large`` / ``dnr-large`` (DNR-G noise).
* Table 12's "w/ score" row covers all three score variants.

Only ML-1M is directly comparable: the paper's Kuaivideo is proprietary (KuaiRand-Pure stands
in, :data:`SUBSTITUTES`) and its Book column is a different Amazon crawl than our sample.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

CSV = Path(__file__).with_name("dnr_paper_numbers.csv")

# our dataset name -> the paper's column, and whether the two are the same data
PAPER_COLUMN = {"ml-1m": "ml-1m", "kuairand": "kuaivideo", "amazon-books": "book"}
SUBSTITUTES = {
    "ml-1m": "same data (MovieLens-1M, 20-core)",
    "kuairand": "KuaiRand-Pure window standing in for the paper's proprietary Kuaivideo",
    "amazon-books": "an implicit Amazon 2014 Books sample standing in for the paper's Book crawl",
}


@lru_cache(maxsize=1)
def _frame() -> pd.DataFrame:
    return pd.read_csv(CSV, dtype={"table": str, "backbone": str}, keep_default_na=False)


def paper_numbers(table: str | None = None) -> pd.DataFrame:
    """All published cells (or those of one table: ``"1"``, ``"2"``, ``"3"``, ``"8"``, ``"9"``,
    ``"10"``, ``"12"``), ``value`` as float."""
    frame = _frame()
    if table is not None:
        frame = frame[frame["table"] == str(table)]
    return frame.copy()


def paper_value(table: str, method: str, dataset: str, metric: str, backbone: str = "") -> float | None:
    """One published cell for *our* dataset name, or None when the paper has no such cell."""
    column = PAPER_COLUMN.get(dataset)
    frame = _frame()
    hit = frame[(frame["table"] == str(table)) & (frame["method"] == method) & (frame["dataset"] == column)
                & (frame["metric"] == metric) & (frame["backbone"] == backbone)]
    return float(hit["value"].iloc[0]) if len(hit) else None
