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
    # smoke batches (256) are not sliced by the CPU default of 256; the applied patience is recorded
    assert prm["micro_batch"] == 0 == retriever["micro_batch"] and prm["patience_epochs"] >= 1

    code, out, _ = run_cli(*args)
    assert code == 0 and "3 already finished, 0 to run" in out
    code, out, _ = run_cli(*args, "--force", "--methods", "random")  # last --methods wins
    assert code == 0 and "0 already finished, 1 to run" in out
    # slicing is an execution setting: same config hash, recorded in the record
    code, out, _ = run_cli(*args, "--force", "--methods", "prm", "--micro-batch", "100")
    sliced = read_record(tmp_path / "results", RunSpec("ml-100k", "prm", 0))
    assert code == 0 and sliced["micro_batch"] == 100 and sliced["config_hash"] == prm["config_hash"]
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
    (("--methods", "prm", "--dataset", "ml-100k", "--micro-batch", "-1"), "--micro-batch must be >= 0"),
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


def test_plan_reports_each_state_and_trains_nothing(run_cli, tmp_path):
    """``--plan``: finished / resumes / retry / outdated / new, read from records and checkpoints;
    the estimate is the finished seeds' median time less a checkpoint's; nothing is written."""
    from benchmark import store
    from benchmark.config import resolve_run_config
    from benchmark.trainer import _atomic_torch_save

    results = tmp_path / "results"
    digest = resolve_run_config("ml-100k", "prm", "smoke", {}).digest()
    ok = {"status": "ok", "config_hash": digest, "train_seconds": 600.0, "eval_seconds": 60.0, "best_epoch": 3,
          "epochs_run": 5, "headline": {"N@6": 0.1234}, "finished_utc": "2026-12-01T10:00:00+00:00"}
    store.write_record(results, RunSpec("ml-100k", "prm", 0), ok)
    _atomic_torch_save({"tag": digest, "stage": 0, "epoch": 2, "epochs_run": 2, "best_epoch": 2, "best_value": 0.1,
                        "stale": 0, "train_seconds": 240.0, "eval_seconds": 0.0, "model": {}},
                       store.checkpoint_path(results, RunSpec("ml-100k", "prm", 1)))
    store.write_record(results, RunSpec("ml-100k", "prm", 2), {"status": "failed", "config_hash": digest,
                                                                 "error": "RuntimeError: boom"})
    store.write_record(results, RunSpec("ml-100k", "prm", 3), {**ok, "config_hash": "another"})
    before = sorted(p.name for p in results.rglob("*"))

    code, out, _ = run_cli("--methods", "prm", "--dataset", "ml-100k", "--profile", "smoke", "--plan",
                           "--seeds", "0", "1", "2", "3", "4")
    assert code == 0, out
    rows = {int(line.split()[2]): line for line in out.splitlines() if line.startswith("ml-100k")}
    assert "finished" in rows[0] and "best epoch 3 of 5" in rows[0] and "N@6 12.34" in rows[0]
    assert "resumes" in rows[1] and "after epoch 2" in rows[1] and "~7 min" in rows[1]  # 11 min - 4 min
    assert "retry" in rows[2] and "boom" in rows[2] and "~11 min" in rows[2]
    assert "outdated" in rows[3] and "another config hash" in rows[3]
    assert "new" in rows[4] and "~11 min" in rows[4]
    assert "1 finished, 1 resumes, 1 retry, 1 outdated, 1 new" in out and "~40 min for the 4 runs" in out
    assert sorted(p.name for p in results.rglob("*")) == before  # trained and wrote nothing
    # a checkpoint of another config is named; without a finished seed there is no estimate
    code, out, _ = run_cli("--methods", "prm", "--dataset", "ml-100k", "--profile", "smoke", "--plan",
                           "--seeds", "1", "--set", "train.lr=0.5")
    assert code == 0 and "checkpoint is of another config" in out and "no estimate" in out, out
    # a resumed run with no finished seed: a lower bound from its checkpoint's stopping rule
    dnr = RunSpec("ml-100k", "dnr-b", 0)
    dnr_digest = resolve_run_config("ml-100k", "dnr-b", "smoke", {}).digest()
    _atomic_torch_save({"tag": dnr_digest, "stage": 0, "epoch": 10, "epochs_run": 10, "best_epoch": 8,
                        "best_value": 0.1, "stale": 2, "train_seconds": 500.0, "eval_seconds": 100.0, "model": {},
                        "stopping": {"patience": 5, "min_epochs": 20, "max_epochs": 200, "stages": 1}},
                       store.checkpoint_path(results, dnr))
    code, out, _ = run_cli("--methods", "dnr-b,prm", "--dataset", "ml-100k", "--profile", "smoke", "--plan",
                           "--seeds", "0", "4")
    rows = {tuple(line.split()[1:3]): line for line in out.splitlines() if line.startswith("ml-100k")}
    assert "≥10 min" in rows[("dnr-b", "0")] and "at least 10 more epochs at 60 s" in rows[("dnr-b", "0")], out
    assert "new" in rows[("dnr-b", "4")] and "~11 min" in rows[("prm", "4")]
    assert ("~11 min for the 1 runs with a finished seed to go by; at least 10 min for the 1 resumed runs "
            "with no finished seed; 1 without an estimate") in out, out


def test_lane_eta_uses_finished_seeds_and_falls_back_to_the_lane_mean(tmp_path):
    from benchmark import store
    from benchmark.config import resolve_run_config

    opts = runner.RunOptions(results_dir=tmp_path, profile="smoke")
    digest = resolve_run_config("ml-100k", "prm", "smoke", {}).digest()
    store.write_record(tmp_path, RunSpec("ml-100k", "prm", 0),
                       {"status": "ok", "config_hash": digest, "train_seconds": 600.0, "eval_seconds": 60.0})
    remaining = [RunSpec("ml-100k", "prm", 1), RunSpec("ml-100k", "prm", 2), RunSpec("ml-100k", "dnr-b", 0)]
    assert runner.lane_eta(remaining, opts, per_run=30.0) == pytest.approx(2 * 660.0 + 30.0)
    assert runner.lane_eta([], opts, per_run=30.0) == 0.0
    # a resumed run without a finished seed: its checkpoint's lower bound where that exceeds the lane mean
    from benchmark.trainer import _atomic_torch_save
    _atomic_torch_save({"tag": resolve_run_config("ml-100k", "dnr-b", "smoke", {}).digest(), "stage": 0, "epoch": 4,
                        "epochs_run": 4, "best_epoch": 4, "best_value": 0.1, "stale": 0, "train_seconds": 80.0,
                        "eval_seconds": 0.0, "model": {},
                        "stopping": {"patience": 3, "min_epochs": 0, "max_epochs": 200, "stages": 1}},
                       store.checkpoint_path(tmp_path, RunSpec("ml-100k", "dnr-b", 0)))
    assert runner.lane_eta(remaining, opts, per_run=30.0) == pytest.approx(2 * 660.0 + 60.0)  # 3 epochs × 20 s
    assert runner.lane_eta(remaining, opts, per_run=90.0) == pytest.approx(2 * 660.0 + 90.0)
