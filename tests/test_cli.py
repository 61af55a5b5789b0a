"""``python -m benchmark`` end to end in a temporary results folder, and its bad-input paths."""
from __future__ import annotations

import socket

import pytest

from benchmark import runner
from benchmark.cli import main
from benchmark.store import RunSpec, path_for, read_record


@pytest.fixture
def run_cli(tmp_path, capsys):
    cache = tmp_path / "cache"

    def invoke(*args):
        code = main(["--results-dir", str(tmp_path / "results"), "--cache-dir", str(cache), "--quiet", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def test_list_methods(run_cli):
    code, out, _ = run_cli("--list")
    assert code == 0 and "prm" in out and "dnr-b" in out and "switch_epoch" in out


def test_end_to_end_skip_force_and_retry(run_cli, tmp_path):
    args = ("--methods", "retriever,random,prm", "--dataset", "ml-100k", "--profile", "smoke")
    code, out, _ = run_cli(*args)
    assert code == 0, out
    assert "0 already finished, 3 to run" in out and out.count(": ok in") == 3
    for method in ("retriever", "random", "prm"):
        record = read_record(tmp_path / "results", RunSpec("ml-100k", method, 0))
        assert record["status"] == "ok" and set(record["headline"]) == {"H@6", "N@6", "M@6", "F1@6", "AUC"}
        assert path_for(tmp_path / "results", RunSpec("ml-100k", method, 0), ".npz").exists()
        assert record["config"]["profile"] == "smoke" and record["environment"]["torch"]
    prm = read_record(tmp_path / "results", RunSpec("ml-100k", "prm", 0))
    assert prm["epochs_run"] >= 1 and prm["history"] and prm["n_params"] > 0 and prm["seconds_per_epoch"] > 0
    retriever = read_record(tmp_path / "results", RunSpec("ml-100k", "retriever", 0))
    assert retriever["epochs_run"] == 0 and retriever["uses_retriever_score"]

    code, out, _ = run_cli(*args)
    assert code == 0 and "3 already finished, 0 to run" in out
    code, out, _ = run_cli(*args, "--force", "--methods", "random")  # last --methods wins
    assert code == 0 and "0 already finished, 1 to run" in out
    # a setting change makes the record stale: the run is redone
    code, out, _ = run_cli(*args, "--set", "prm.dropout=0.2")
    assert code == 0 and "2 already finished, 1 to run" in out

    # a failing run is recorded and retried next time
    bad = ("--methods", "prm", "--dataset", "ml-100k", "--profile", "smoke", "--set", "prm.n_heads=3")
    code, out, _ = run_cli(*bad)
    record = read_record(tmp_path / "results", RunSpec("ml-100k", "prm", 0))
    assert code == 1 and record["status"] == "failed" and record["error"]
    code, out, _ = run_cli(*bad)
    assert code == 1 and "0 already finished, 1 to run" in out


@pytest.mark.parametrize("args, needle", [
    (("--methods", "prn", "--dataset", "ml-100k"), "did you mean prm"),
    (("--methods", "prm", "--dataset", "ml-1n"), "did you mean ml-1m"),
    (("--methods", "prm", "--dataset", "ml-100k", "--set", "model.nope=1"), "model.nope"),
    (("--methods", "prm", "--dataset", "ml-100k", "--set", "prm.hiden=3"), "did you mean 'hidden'"),
    (("--methods", "prm", "--dataset", "ml-100k", "--set", "train.lr=abc"), "lr"),
    (("--methods", "prm", "--dataset", "ml-100k", "--set", "trian.lr=1"), "trian"),
    (("--methods", "prm", "--dataset", "ml-100k", "--set", "prm.dropout=high"), "dropout"),
    (("--methods", "prm",), "required"),
])
def test_bad_input_exit_2(run_cli, args, needle):
    code, out, err = run_cli(*args)
    assert code == 2 and needle in err, err


def test_unreachable_scheduler_and_misplaced_scheduler_exit_2(run_cli, tmp_path, monkeypatch):
    """Backend errors raised when the lanes start (not at planning) still exit 2 with a clear message,
    and nothing is written. (Loky and Dask against sequential records: tests/test_backends.py.)"""
    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT_S", 2.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ("--methods", "retriever", "--dataset", "ml-100k", "--profile", "smoke")
    code, _, err = run_cli(*args, "--backend", "dask", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert code == 2 and "cannot reach the Dask scheduler" in err, err
    code, _, err = run_cli(*args, "--backend", "loky", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert code == 2 and "needs --backend dask" in err, err
    assert not (tmp_path / "results" / "runs").exists()
