"""The report's LaTeX compiles with pdflatex (reporting.md; issue: "the LaTeX must compile").

Two inputs: synthetic records that fill every table kind (tests/test_paper_tables.py) and the
committed records under results/. ``tests/run.sh`` installs pdflatex from Debian when it can; where
it cannot, this test fails with what to install (deselect it with ``-k 'not pdflatex'``)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmark import report
from conftest import ROOT
from test_paper_tables import write_records


@pytest.fixture(scope="module")
def pdflatex():
    path = shutil.which("pdflatex")
    if path is None:
        pytest.fail("pdflatex is not installed: install texlive-latex-base and texlive-latex-recommended "
                    "(tests/run.sh does it when run as root with apt), or deselect with -k 'not pdflatex'")
    return path


def compile_tables(pdflatex: str, tables_dir) -> str:
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
                          cwd=tables_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tables_dir / "tables.pdf").stat().st_size > 0
    return proc.stdout


def test_every_table_kind_compiles_with_pdflatex(tmp_path, pdflatex):
    results = tmp_path / "results"
    write_records(results)
    built = report.build(results, tmp_path / "out", figures=False)
    names = {f.name for f in built.files if f.suffix == ".tex"}
    assert {"table1.tex", "table2.tex", "table3.tex", "table9.tex", "table12.tex", "paper_vs_measured.tex",
            "tables.tex"} <= names, names
    compile_tables(pdflatex, tmp_path / "out" / "tables")


def test_the_committed_results_tables_compile_with_pdflatex(tmp_path, pdflatex):
    report.build(ROOT / "results", tmp_path, figures=False)
    log = compile_tables(pdflatex, tmp_path / "tables")
    assert "Output written on tables.pdf" in log
