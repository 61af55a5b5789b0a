"""``python -m benchmark.data``: output contract, exit codes and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmark.data.__main__ import main
from conftest import ROOT, SMALL

SMALL_SET = [arg for key, value in SMALL.items() for arg in ("--set", f"data.{key}={value}")]
REQUIRED = {"dataset", "users", "items", "interactions", "k_core", "window_counts", "requests",
            "candidates_per_request", "mean_positives_per_request", "retriever_auc", "retriever_order",
            "diagnostics", "build_seconds", "cached"}


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_contract_and_cache_flag(capsys, cache_dir):
    code, out, _ = run_main(capsys, "--dataset", "ml-100k", "--cache-dir", str(cache_dir), "--json", "--jobs", "1",
                            *SMALL_SET)
    assert code == 0
    s = json.loads(out)
    assert REQUIRED <= set(s)
    assert s["dataset"] == "ml-100k" and s["k_core"] == 5 and s["cached"] is False
    assert set(s["window_counts"]) >= {"R1", "R2", "R3_h2"}
    assert set(s["requests"]) == {"train", "val", "test"} and s["candidates_per_request"] == 50
    assert set(s["retriever_order"]["test"]) == {"H@6", "N@6", "M@6", "F1@6", "AUC"}
    assert set(s["diagnostics"]) >= {"exposed_vs_filler_auc", "positive_vs_rest_auc"}
    code, out, _ = run_main(capsys, "--dataset", "ml-100k", "--cache-dir", str(cache_dir), "--json", *SMALL_SET)
    assert code == 0 and json.loads(out)["cached"] is True
    code, out, _ = run_main(capsys, "--dataset", "ml-100k", "--cache-dir", str(cache_dir), *SMALL_SET)
    assert code == 0 and "retriever AUC" in out and "windows R1" in out


def test_unknown_dataset_exit_2(capsys):
    code, _, err = run_main(capsys, "--dataset", "ml-1n")
    assert code == 2 and "did you mean ml-1m" in err


@pytest.mark.parametrize("setting, key", [("data.k_cor=5", "k_cor"), ("data.fill=best", "fill"),
                                          ("data.k_core=abc", "k_core"), ("train.lr=1", "train"),
                                          ("kcore", "kcore")])
def test_bad_set_exit_2_names_key(capsys, cache_dir, setting, key):
    code, _, err = run_main(capsys, "--dataset", "ml-100k", "--cache-dir", str(cache_dir), "--set", setting)
    assert code == 2 and key in err
    assert not (cache_dir / "lists").exists()


def test_missing_dataset_exit_2_nothing_written(capsys, tmp_path, cache_dir):
    (tmp_path / "data").mkdir()
    code, out, err = run_main(capsys, "--dataset", "ml-1m", "--data-dir", str(tmp_path / "data"),
                              "--cache-dir", str(cache_dir), "--no-download")
    assert code == 2 and out == ""
    assert "ratings.dat" in err and str(tmp_path / "data" / "ml-1m") in err
    assert not cache_dir.exists() or not any(p.is_file() for p in cache_dir.rglob("*"))


def test_corrupt_file_exit_2_names_line(capsys, tmp_path, cache_dir):
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "ratings.dat").write_text("1::2::3::4\n1::2::3\n")
    code, _, err = run_main(capsys, "--dataset", "ml-1m", "--data-dir", str(tmp_path), "--cache-dir", str(cache_dir))
    assert code == 2 and "ratings.dat, line 2" in err
    assert not (cache_dir / "lists").exists()


def test_module_entry_point_subprocess(tmp_path):
    env = {**os.environ, "DNR_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("DNR_BENCH_DATA", None)
    proc = subprocess.run([sys.executable, "-m", "benchmark.data", "--dataset", "nope"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown dataset" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmark.data", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--data-dir" in proc.stdout
