"""Every backend writes the same records as the sequential reference (architecture.md §6).

The same runs go through ``benchmark.runner.execute`` three times, into three results folders:
``sequential`` (in-process, the reference), ``loky`` (2 local processes) and ``dask`` (a local
Dask cluster of 2 worker processes). Runs are seeded and deterministic on CPU, and every
backend uses the same number of torch threads, so the records must agree exactly: config hash,
validation and test metrics, the per-epoch history (less its wall-clock seconds) and every
per-request array. The Dask run also carries a run that fails inside its worker (a dataset with
no raw files), which must come back as a failed summary with its failed record written, without
stopping its lane.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import LocalCluster

from benchmark import runner
from benchmark.errors import UserInputError
from benchmark.runner import RunOptions, execute
from benchmark.store import RunSpec, path_for, read_per_request, read_record

# Tiny but real: the smoke profile (150 ml-100k users, 2 epochs, DNR's switch at epoch 1) on 64
# training requests; a non-neural, a list-wise and a DNR method, and one method with two seeds.
SETTINGS = {"train": {"max_train_requests": 64}}
SPECS = [RunSpec("ml-100k", "retriever", 0), RunSpec("ml-100k", "prm", 0), RunSpec("ml-100k", "dnr-b", 0),
         RunSpec("ml-100k", "prm", 1)]
# KuaiRand's raw files are in neither the (empty) data folder nor the cache, and downloads are off.
FAILING = RunSpec("kuairand", "prm", 0)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backends")
    (root / "empty-data").mkdir()
    return root


def options(root: Path, name: str) -> RunOptions:
    """The same torch thread count (1) in every backend, so float reductions run in the same order."""
    return RunOptions(results_dir=root / name, profile="smoke", settings=SETTINGS, data_dir=str(root / "empty-data"),
                      cache_dir=str(root / "cache"), download=False, threads=1)


@pytest.fixture(scope="module")
def sequential(root) -> Path:
    """The reference runs (they also build the shared list cache the other backends load)."""
    summaries = execute(SPECS, options(root, "sequential"), ["cpu"], "sequential")
    assert [s["status"] for s in summaries] == ["ok"] * len(SPECS), summaries
    return root / "sequential"


@pytest.fixture(scope="module")
def dask_summaries(root, sequential) -> list[dict]:
    return execute([FAILING, *SPECS], options(root, "dask"), ["cpu"], "dask", n_jobs=2)


def assert_same_records(reference: Path, other: Path) -> None:
    for spec in SPECS:
        a, b = read_record(reference, spec), read_record(other, spec)
        assert a["status"] == b["status"] == "ok", (spec, b.get("error"))
        assert a["config_hash"] == b["config_hash"], spec
        assert a["metrics"]["val"] == b["metrics"]["val"] and a["metrics"]["test"] == b["metrics"]["test"], spec
        assert (a["best_epoch"], a["epochs_run"]) == (b["best_epoch"], b["epochs_run"]), spec
        untimed = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in (a, b)]
        assert untimed[0] == untimed[1], spec
        pa, pb = read_per_request(reference, spec), read_per_request(other, spec)
        assert sorted(pa) == sorted(pb) and "request_id" in pa, spec
        for key in pa:
            np.testing.assert_array_equal(pa[key], pb[key], err_msg=f"{spec.name} {key}")


def test_runs_are_not_trivially_equal(sequential):
    """Guard for the comparisons below: the reference runs differ by method and by seed."""
    test = {spec: read_record(sequential, spec)["metrics"]["test"] for spec in SPECS}
    assert test[SPECS[1]] != test[SPECS[3]]  # prm seed 0 vs seed 1
    assert len({tuple(sorted(t.items())) for t in test.values()}) == len(SPECS)


def test_loky_lanes_write_the_sequential_records(root, sequential):
    summaries = execute(SPECS, options(root, "loky"), ["cpu"], "loky", n_jobs=2)
    assert sorted(s["spec"].name for s in summaries) == sorted(s.name for s in SPECS)
    assert_same_records(sequential, root / "loky")


def test_dask_lanes_write_the_sequential_records(root, sequential, dask_summaries):
    ok = [s["spec"].name for s in dask_summaries if s["status"] == "ok"]
    assert sorted(ok) == sorted(s.name for s in SPECS)
    assert_same_records(sequential, root / "dask")


def test_failed_run_in_a_dask_worker_is_recorded(root, dask_summaries):
    (failed,) = [s for s in dask_summaries if s["status"] != "ok"]
    assert failed["spec"] == FAILING and failed["status"] == "failed"
    assert failed["error"].startswith("DataUnavailableError") and "KuaiRand" in failed["error"]
    record = read_record(root / "dask", FAILING)
    assert record["status"] == "failed" and record["error"] == failed["error"]
    assert "DataUnavailableError" in record["traceback"] and record["config_hash"]
    assert not path_for(root / "dask", FAILING, ".npz").exists()
    # the failure was first in its lane (round-robin over 2 lanes): the lane went on with its other runs
    lanes = runner.make_lanes([FAILING, *SPECS], ["cpu"], 2)
    assert lanes[0][1][0] == FAILING and all(s["status"] == "ok" for s in dask_summaries if s["spec"] != FAILING)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_a_clear_error_not_a_hang(root, monkeypatch):
    monkeypatch.setattr(runner, "SCHEDULER_TIMEOUT_S", 2.0)
    address = f"tcp://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    with pytest.raises(UserInputError, match="cannot reach the Dask scheduler") as err:
        execute(SPECS[:1], options(root, "unreachable"), ["cpu"], "dask", scheduler=address)
    assert time.perf_counter() - started < 15 and address in str(err.value) and "dask scheduler" in str(err.value)
    with pytest.raises(UserInputError, match="cannot reach"):
        execute(SPECS[:1], options(root, "unreachable"), ["cpu"], "dask", scheduler="no port here")
    assert not (root / "unreachable").exists()


def test_scheduler_needs_the_dask_backend(root):
    with pytest.raises(UserInputError, match="needs --backend dask"):
        execute(SPECS[:1], options(root, "x"), ["cpu"], "loky", n_jobs=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(UserInputError, match="unknown backend 'ray'"):
        execute(SPECS[:1], options(root, "x"), ["cpu"], "ray")


def test_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    """A lane names its GPU by id; each Dask worker maps the id to its own ``cuda:N``."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runner._gpu_id("cpu") is None and runner._local_device(None) == "cpu"
    assert runner._gpu_id("cuda:1") == "1" and runner._gpu_id("cuda") == "0"
    assert runner._local_device("1") == "cuda:1" and runner._own_gpu() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the driver sees two GPUs
    assert runner._gpu_id("cuda:0") == "2" and runner._gpu_id("cuda:1") == "3"
    with pytest.raises(UserInputError, match="only 2 GPU"):
        runner._gpu_id("cuda:2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,2")  # a dask-cuda worker owning GPU 3
    assert runner._own_gpu() == "3" and runner._local_device("3") == "cuda:0" and runner._local_device("2") == "cuda:1"
    with pytest.raises(RuntimeError, match="GPU 5 is not visible"):
        runner._local_device("5")


def test_cuda_lanes_without_dask_cuda_use_a_local_cluster(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import dask_cuda -> ImportError
    with runner._local_cluster(1, ["0"]) as cluster:
        assert type(cluster) is LocalCluster and len(cluster.workers) == 1
    assert "dask_cuda is not installed" in caplog.text


def test_run_on_an_unusable_gpu_writes_its_failed_record(root, sequential):
    """cuda:99 exists on no machine: the run fails (no CUDA build, or no such device) and its
    record is still written, with the GPU fields left empty rather than raising a second time."""
    opts = options(root, "gpu99")
    (summary,) = execute(SPECS[1:2], opts, ["cuda:99"], "sequential")
    record = read_record(opts.results_dir, SPECS[1])
    assert summary["status"] == record["status"] == "failed" and record["error"] == summary["error"]
    assert record["environment"]["device"] == "cuda:99" and record["environment"]["gpu"] is None


def test_git_commit_of_a_copy_without_git_comes_from_the_environment(tmp_path, monkeypatch):
    """A copy of the code with no ``.git`` (rsynced to a GPU node) records the commit it was told;
    a checkout records its own HEAD and ignores the variable."""
    monkeypatch.setenv("DNR_BENCH_GIT_COMMIT", "abc123")
    head = runner.git_commit()
    assert head and not head.endswith("+copy")  # this checkout has .git
    monkeypatch.setattr(runner, "ROOT", tmp_path)  # no repository here
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert runner.git_commit() == "abc123+copy"
    monkeypatch.delenv("DNR_BENCH_GIT_COMMIT")
    assert runner.git_commit() is None


def test_deterministic_seeding_fixes_the_cublas_workspace(monkeypatch):
    """cuBLAS matrix products are reproducible only with a fixed workspace: deterministic seeding
    sets one (unless the user chose another) before the run's first CUDA call."""
    from benchmark.trainer import seed_everything

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so teardown restores the original
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    seed_everything(0, deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
