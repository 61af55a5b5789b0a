"""``./run_all.sh``, the full-suite entry point, end to end in temporary folders.

The script runs with ``DNR_BENCH_PYTHON`` set to this interpreter (no install) on the embedded
ml-100k and the smoke profile, with an empty data folder and downloads off (so KuaiRand cannot be
obtained), and two small ``--set`` values to keep it short: ``data.n_folds=2`` (fewer retriever
fits) must reach the data step and the runs alike, ``train.max_train_requests=128`` only the runs
(the data step takes ``data.*`` alone and would reject it); ``--threads 1`` because tiny models on a
shared two-core machine train several times faster on one thread.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "run_all.sh"
FAST = ["--profile", "smoke", "--set", "data.n_folds=2", "--set", "train.max_train_requests=128", "--threads", "1"]
METHODS = ("retriever", "prm", "dnr-b")


def run_all(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the script with an empty data folder (no download) and the cache under ``tmp``."""
    (tmp / "no-data").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DNR_BENCH_PYTHON": sys.executable, "DNR_BENCH_CACHE": str(tmp / "cache")}
    env.pop("DNR_BENCH_DATA", None)
    return subprocess.run(["bash", str(SCRIPT), "--data-dir", str(tmp / "no-data"), "--no-download", *args],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def summary(proc: subprocess.CompletedProcess) -> str:
    """The summary block the script prints last (on stdout)."""
    assert "== Summary" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout.split("== Summary", 1)[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A fresh run of three methods on ml-100k and on KuaiRand, which cannot be obtained (empty data
    folder, no download); then ml-100k alone again, with the report this time."""
    tmp = tmp_path_factory.mktemp("run-all")
    args = (*FAST, "--methods", ",".join(METHODS), "--seeds", "0", "--results-dir", str(tmp / "results"))
    first = run_all(tmp, *args, "--datasets", "ml-100k,kuairand", "--no-report")
    records = {m: tmp / "results" / "runs" / "ml-100k" / m / "seed0.json" for m in METHODS}
    stamps = {m: p.stat().st_mtime_ns for m, p in records.items() if p.exists()}
    second = run_all(tmp, *args, "--datasets", "ml-100k")
    return {"tmp": tmp, "first": first, "second": second, "records": records, "stamps": stamps}


def test_fresh_run_writes_every_record_with_the_profile(suite):
    first = suite["first"]
    text = summary(first)
    assert "datasets built: ml-100k\n" in text
    assert "runs: 3 runs asked for: 0 already finished, 3 to run; 3 ok, 0 failed" in text
    assert "report: skipped (--no-report)" in text
    for method, path in suite["records"].items():
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["method"] == method and record["seed"] == 0
        assert record["config"]["profile"] == "smoke"
        assert record["config"]["data"]["sample_users"] == 150 and record["config"]["data"]["n_folds"] == 2
        assert record["config"]["train"]["max_train_requests"] == 128
        assert path.with_suffix(".npz").exists()


def test_dataset_not_obtained_is_listed_and_fails_the_exit_code(suite):
    first = suite["first"]
    assert first.returncode == 1, first.stdout + first.stderr
    text = summary(first)
    reasons = text.split("datasets not built (not obtained, or their lists failed):\n", 1)[1].splitlines()
    assert reasons[0].startswith("  kuairand: KuaiRand-Pure (kuairand) not found") and "download disabled" in reasons[0]
    assert not reasons[1].startswith("  ")  # only kuairand
    assert "NOT everything asked for ran (see above).\nwhat is finished, resumable or left: " in text
    assert text.rstrip().endswith(f"-m benchmark --plan --dataset ml-100k --methods {','.join(METHODS)} --seeds 0 "
                                  f"--profile smoke --results-dir {suite['tmp'] / 'results'} "
                                  "--set data.n_folds=2 train.max_train_requests=128")
    assert not (suite["tmp"] / "results" / "runs" / "kuairand").exists()


def test_prebuilt_lists_are_the_ones_the_runs_used(suite):
    """The data step applies the profile's data settings and the data.* --set values, so the cache
    holds exactly one ml-100k list folder, the one every record names."""
    folders = list((suite["tmp"] / "cache" / "lists").glob("ml-100k-*"))
    assert len(folders) == 1
    for path in suite["records"].values():
        assert folders[0].name == f"ml-100k-{json.loads(path.read_text())['data']['cache_key'][:16]}"


def test_rerun_resumes_without_training_then_reports(suite):
    second = suite["second"]
    assert second.returncode == 0, second.stdout + second.stderr
    text = summary(second)
    assert "runs: 3 runs asked for: 3 already finished, 0 to run" in text
    assert "datasets built: ml-100k\n" in text and "not built" not in text
    assert "report: ok" in text and text.rstrip().endswith("Everything asked for ran.")
    assert {m: p.stat().st_mtime_ns for m, p in suite["records"].items()} == suite["stamps"]
    assert (suite["tmp"] / "results" / "tables" / "table1.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--frobnicate"], "unknown option --frobnicate"),
    (["--seeds", "0 x"], "--seeds: x is not a non-negative integer"),
    (["--results-dir"], "--results-dir needs a value"),
    (["--methods", "prm,nope"], "unknown method 'nope'"),
    (["--profile", "smok"], "did you mean smoke"),
    (["--datasets", "ml-100k", "--methods", "prm", "--set", "prm.no_such_key=1"], "no_such_key"),
])
def test_bad_option_exit_2_before_any_work(tmp_path, args, message):
    proc = run_all(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["no-data"]  # no results, no cache


FAKE = """#!/usr/bin/env bash
# Stands in for python: logs each benchmark command, fakes its outcome; anything else is real python.
case "$1 $2" in
    "-m benchmark.data")
        echo "data $*" >> "{log}"
        if [[ " $* " == *" --dataset ml-1m "* ]]; then echo "error: ratings.dat is broken, line 3" >&2; exit 2; fi
        exit 0 ;;
    "-m benchmark")
        echo "runs $*" >> "{log}"
        echo "4 runs asked for: 1 already finished, 3 to run (sequential, devices cpu) -> x"
        echo "finished in 1s: 2 ok, 1 failed"
        echo "  failed ml-100k/prm/seed1: RuntimeError: diverged"
        exit 1 ;;
    "-m benchmark.report")
        echo "report $*" >> "{log}"
        exit 3 ;;
esac
exec "{python}" "$@"
"""


def test_flow_options_and_every_failure_in_the_summary(tmp_path):
    """With the three steps faked: one data call per canonical dataset with the profile and only the
    data.* settings, one run call over the built datasets with every pass-through option, the report
    over the same datasets, and the dataset, run and report failures all in the summary (exit 1)."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE.replace("{log}", str(log)).replace("{python}", sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "DNR_BENCH_PYTHON": str(fake), "DNR_BENCH_CACHE": str(tmp_path / "cache")}
    env.pop("DNR_BENCH_DATA", None)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--datasets", "ml-100k ml-1m,kuaivideo", "--methods", "prm, dnr-b", "--seeds", "0,1",
         "--profile", "smoke", "--results-dir", "out", "--n-jobs", "2", "--backend", "loky", "--data-dir", "raw",
         "--set", "data.k_core=3", "--set", "train.lr=0.01"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    common = "--profile smoke --data-dir raw --set data.k_core=3"
    assert calls[:3] == [f"data -m benchmark.data --dataset {d} {common}" for d in ("ml-100k", "ml-1m", "kuairand")]
    assert calls[3] == ("runs -m benchmark --dataset ml-100k,kuairand --methods prm,dnr-b --seeds 0 1 --profile smoke "
                        "--results-dir out --n-jobs 2 --backend loky --threads 1 --data-dir raw --set data.k_core=3 "
                        "--set train.lr=0.01")
    assert calls[4:] == ["report -m benchmark.report --results-dir out --datasets ml-100k,kuairand"]
    text = summary(proc)
    assert "datasets built: ml-100k kuairand\n" in text
    assert "  ml-1m: ratings.dat is broken, line 3\n" in text
    assert "runs: 4 runs asked for: 1 already finished, 3 to run; 2 ok, 1 failed\n" in text
    assert "  ml-100k/prm/seed1: RuntimeError: diverged\n" in text
    assert "report: FAILED (exit 3" in text and "NOT everything asked for ran" in text
    assert text.rstrip().endswith(" -m benchmark --plan --dataset ml-100k,kuairand --methods prm,dnr-b --seeds 0 1 "
                                  "--profile smoke --results-dir out --set data.k_core=3 train.lr=0.01")


@pytest.mark.parametrize("profile, extra, seeds, threads", [
    ("smoke", [], "--seeds 0 ", "--threads 1"),  # smoke: one seed, one torch thread per lane
    ("paper", [], "--seeds 0 1 2 ", None),  # paper: the paper's three seeds, the runner's thread default
    ("smoke", ["--seeds", "3", "--threads", "2"], "--seeds 3 ", "--threads 2"),  # given values win
])
def test_profile_defaults_for_seeds_and_threads(tmp_path, profile, extra, seeds, threads):
    log = tmp_path / "calls.log"
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE.replace("{log}", str(log)).replace("{python}", sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "DNR_BENCH_PYTHON": str(fake), "DNR_BENCH_CACHE": str(tmp_path / "cache")}
    subprocess.run(["bash", str(SCRIPT), "--datasets", "ml-100k", "--methods", "prm", "--profile", profile,
                    "--data-dir", "raw", "--no-report", *extra], cwd=tmp_path, env=env, capture_output=True,
                   text=True, timeout=120)
    run = next(line for line in log.read_text().splitlines() if line.startswith("runs "))
    assert seeds in run and (threads in run if threads else "--threads" not in run), run
