"""The perf sections on tiny real inputs: epochs (phases found from the contract, ratios to PRM,
inference cost per request), scaling (half and all users, all/half ratios), throughput (requests
per second per phase and device) and suite (the timed command lines, run and failure counts, the
speed-up). Values are measured, so only their shape and invariants are checked, never thresholds."""
from __future__ import annotations

import json
import os
import sys

import pytest

from benchmark import perf
from benchmark.errors import UserInputError
from benchmark.perf import (_phases, _raw_user_count_in_child, _time_suite, check_devices, growth_ratios, main,
                            measure_epochs, measure_scaling, measure_suite, measure_throughput, raw_user_count,
                            scaling_user_counts, suite_command)
from conftest import SMALL as DATA_SMALL
from helpers import build

SMALL_SET = [f"data.{key}={value}" for key, value in DATA_SMALL.items()]
SMALL = [*SMALL_SET,
         "train.max_train_requests=256", "train.batch_size=128", "model.switch_epoch=3"]


def test_phases_come_from_stages_and_step_activity(tiny_spec):
    assert _phases(build("prm", tiny_spec)) == [("", 0, 1)]
    dnr = build("dnr-b", tiny_spec, switch_epoch=40)
    assert _phases(dnr) == [("", 0, 1), ("@epoch>=41", 0, 41)]  # the generator step starts after T
    assert _phases(build("dnr-b-heuristic", tiny_spec)) == [("", 0, 1)]


def test_epochs_section_times_every_phase_and_inference():
    r = measure_epochs("ml-100k", ["dnr-b", "pier"], epochs=1, data_dir=None, settings=SMALL, inference_requests=64)
    methods = r["methods"]
    assert set(methods) == {"prm", "dnr-b", "dnr-b@epoch>=4", "pier"}
    assert methods["prm"]["ratio_to_prm"] == 1.0
    assert all(v["seconds_per_epoch"] > 0 for v in methods.values())
    # one inference figure per method, on its last phase
    assert {u for u, v in methods.items() if "inference_ms_per_request" in v} == {"prm", "dnr-b@epoch>=4", "pier"}
    assert r["inference_requests"] == 64 and r["train_requests"] == 256


# --- scaling -------------------------------------------------------------------------------------

def test_scaling_user_counts_halve_the_users_a_build_starts_from():
    assert scaling_user_counts(943, None) == (943, 471)
    assert scaling_user_counts(943, 150) == (150, 75)  # data.max_users caps "all"
    assert scaling_user_counts(943, 5000) == (943, 471)  # a cap above the raw users changes nothing
    with pytest.raises(UserInputError, match="at least 2 users"):
        scaling_user_counts(1, None)


def test_raw_user_count_is_the_population_max_users_samples_from(tmp_path):
    assert raw_user_count("ml-100k", None) == 943  # MovieLens-100K's published user count
    # counted in a child process (so that this process's peak memory stays small); its errors come back
    with pytest.raises(RuntimeError, match="does not exist"):
        _raw_user_count_in_child("ml-100k", str(tmp_path / "missing"), [])


def _build(users, requests, seconds, main_mb, worker_mb):
    return {"users": users, "interactions": 10 * requests, "requests": requests, "build_seconds": seconds,
            "build_wall_seconds": seconds + 1, "stage_seconds": {"read": 0.5, "retriever": seconds - 0.5, "save": 0.0},
            "peak_rss_mb": {"main": main_mb, "retriever_worker": worker_mb, "n_jobs": 2},
            "peak_rss_mb_upper_bound": main_mb + 2 * worker_mb}


def test_growth_ratios_are_all_over_half():
    half, full = _build(40, 1000, 4.5, 500.0, 300.0), _build(80, 2000, 8.5, 700.0, 400.0)
    g = growth_ratios(half, full, baseline_mb=400.0)
    assert g["users"] == 2.0 and g["requests"] == 2.0 and g["interactions"] == 2.0
    assert g["build_seconds"] == pytest.approx(8.5 / 4.5)
    assert g["peak_rss_mb_upper_bound"] == pytest.approx(1500 / 1100)
    assert g["peak_rss_mb_main"] == pytest.approx(700 / 500)
    assert g["peak_rss_mb_main_above_baseline"] == pytest.approx(300 / 100)
    assert g["seconds_ratio_over_requests_ratio"] == pytest.approx(8.5 / 4.5 / 2)
    assert g["stage_seconds"]["retriever"] == pytest.approx(8 / 4)
    assert g["stage_seconds"]["save"] is None  # no growth factor for a stage that took no time
    assert "peak_rss_mb_main_above_baseline" not in growth_ratios(half, full)


@pytest.mark.slow
def test_scaling_section_builds_half_and_all_in_fresh_processes():
    tiny = [*SMALL_SET, "data.n_folds=2", "data.mf_max_epochs=1", "data.mf_patience=1"]  # 3 one-epoch MF fits
    r = measure_scaling("ml-100k", None, tiny, jobs=1)  # in-process MF fits: no worker start-up
    half, full = r["half"], r["all"]
    assert r["raw_users"] == 943 and half["max_users"] == 75 and full["max_users"] == 150
    assert half["settings"][-1] == "data.max_users=75" and full["settings"] == tiny
    assert half["users"] <= 75 < full["users"] <= 150  # the k-core filter runs after the subset is drawn
    assert 0 < half["requests"] < full["requests"]
    g = r["ratio_all_over_half"]
    assert g["requests"] == full["requests"] / half["requests"]
    assert g["build_seconds"] == full["build_seconds"] / half["build_seconds"]
    assert g["peak_rss_mb_upper_bound"] == full["peak_rss_mb_upper_bound"] / half["peak_rss_mb_upper_bound"]
    assert 0 < r["import_baseline_rss_mb"] <= full["peak_rss_mb"]["main"]  # a high-water mark includes it
    assert r["spawning_process_peak_rss_mb"] <= full["peak_rss_mb"]["main"]  # Linux carries it across exec


# --- throughput ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_cache(tmp_path_factory):
    """The SMALL ml-100k lists (the throughput tests) and the smoke profile's (the suite test), built
    once for this module's tests."""
    from benchmark.config import PROFILES
    from benchmark.data import build_candidate_lists

    cache = tmp_path_factory.mktemp("perf-cache")
    for overrides in (DATA_SMALL, PROFILES["smoke"]["data"]):
        build_candidate_lists("ml-100k", cache_dir=cache, overrides=overrides, download=False, progress=False,
                              n_jobs=1)
    return cache


def test_throughput_times_every_phase_and_infers_on_the_last(smoke_cache, monkeypatch):
    monkeypatch.setenv("DNR_BENCH_CACHE", str(smoke_cache))
    out = measure_throughput("ml-100k", ["prm", "dnr-b"], ["cpu"], epochs=1, settings=SMALL, inference_requests=64)
    r = out["cpu"]
    assert set(out) == {"cpu"} and r["device_name"] and r["torch_threads"] == 1 and r["batch_size"] == 128
    methods = r["methods"]
    assert set(methods) == {"prm", "dnr-b", "dnr-b@epoch>=4"}  # DNR before and after its switch epoch
    for v in methods.values():
        assert v["train_requests_timed"] == 256 and v["train_batches_timed"] == 2  # one epoch of 256 requests
        assert v["train_requests_per_second"] == v["train_requests_timed"] / v["train_seconds"]
    assert {u for u, v in methods.items() if "inference_requests_per_second" in v} == {"prm", "dnr-b@epoch>=4"}
    assert methods["prm"]["inference_requests_per_second"] == 64 / methods["prm"]["inference_seconds"]
    assert r["inference_requests"] == 64 and r["timed_epochs"] == 1 and r["timed_batches"] is None
    assert r["machine"]["cpus"] == os.cpu_count()  # survives a merge with another machine's entries


def test_throughput_fixed_batches_run_on_into_the_next_epoch(smoke_cache, monkeypatch):
    monkeypatch.setenv("DNR_BENCH_CACHE", str(smoke_cache))
    r = measure_throughput("ml-100k", ["prm"], ["cpu"], settings=SMALL, batches=3, warmup_epochs=0,
                           inference_requests=16)["cpu"]
    assert r["methods"]["prm"]["train_batches_timed"] == 3 and r["methods"]["prm"]["train_requests_timed"] == 384
    assert r["timed_epochs"] is None and r["timed_batches"] == 3


@pytest.mark.parametrize("name, needle", [("tpu", "not a supported device"), ("cuda:999", "CUDA device"),
                                          ("meta", "not a supported device"), ("cpu:0", "not a supported")])
def test_bad_devices_are_user_errors(name, needle):
    with pytest.raises(UserInputError, match=needle):
        check_devices(["cpu", name])
    assert [d.type for d in check_devices(["cpu"])] == ["cpu"]


def test_throughput_cli_writes_under_label_and_keeps_other_keys(smoke_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("DNR_BENCH_CACHE", str(smoke_cache))
    out = tmp_path / "perf.json"
    out.write_text(json.dumps({"data": {"kept": True}}))
    args = ["--section", "throughput", "--methods", "prm", "--batches", "1", "--warmup-epochs", "0",
            "--label", "tp", "--output", str(out), *[a for s in SMALL for a in ("--set", s)]]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["data"] == {"kept": True}
    assert set(report["tp"]["ml-100k"]) == {"cpu"}  # ml-100k without --data-dir
    assert main(["--section", "throughput", "--devices", "tpu", "--output", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


# --- suite ---------------------------------------------------------------------------------------

def test_suite_command_is_a_valid_benchmark_command_line(tmp_path):
    from benchmark.cli import parser

    cmd = suite_command("all", "ml-100k", "smoke", [0], tmp_path, "loky", 2, "/data", ["train.max_epochs=1"], 1)
    assert cmd[:3] == [sys.executable, "-m", "benchmark"]
    args = parser().parse_args(cmd[3:])
    assert (args.methods, args.datasets, args.profile, args.seeds) == ("all", "ml-100k", "smoke", [0])
    assert (args.backend, args.n_jobs, args.results_dir, args.data_dir) == ("loky", 2, tmp_path, "/data")
    assert args.settings == [["train.max_epochs=1"]] and args.threads == 1
    default = parser().parse_args(suite_command("all", "ml-100k", "paper", [0, 1], tmp_path, "sequential", 1,
                                                None, [])[3:])
    assert default.threads is None and default.data_dir is None and default.seeds == [0, 1]


WRITE_RECORDS = """
import sys
from pathlib import Path
from benchmark import store
root = Path(sys.argv[1])
store.write_record(root, store.RunSpec("ml-100k", "prm", 0), {"status": "ok"})
store.write_record(root, store.RunSpec("ml-100k", "dlcm", 0), {"status": "failed", "error": "ValueError: boom"})
sys.exit(int(sys.argv[2]))
"""


def test_time_suite_counts_runs_and_names_failures(tmp_path):
    r = _time_suite([sys.executable, "-c", WRITE_RECORDS, str(tmp_path), "1"], tmp_path)
    assert (r["exit_code"], r["runs"], r["ok"], r["failed"]) == (1, 2, 1, 1)  # exit 1 = some run failed
    assert r["failed_runs"] == {"ml-100k/dlcm/seed0": "ValueError: boom"} and r["wall_seconds"] > 0
    with pytest.raises(RuntimeError, match=r"failed \(2\)"):  # bad input: no result to report
        _time_suite([sys.executable, "-c", WRITE_RECORDS, str(tmp_path / "other"), "2"], tmp_path / "other")


def test_suite_speedup_is_sequential_over_parallel_on_a_warm_cache(smoke_cache, monkeypatch):
    monkeypatch.setenv("DNR_BENCH_CACHE", str(smoke_cache))
    seen = []

    def fake_time_suite(cmd, results_dir):
        seen.append(cmd)
        wall = 12.0 if "sequential" in cmd else 5.0
        return {"wall_seconds": wall, "runs": 2, "ok": 2, "failed": 0, "failed_runs": {}, "exit_code": 0}

    monkeypatch.setattr(perf, "_time_suite", fake_time_suite)
    r = measure_suite("ml-100k", "smoke", "reference", n_jobs=2)
    assert r["warm_cache"]["already_cached"]  # the smoke profile's lists are the ones smoke_cache holds
    assert r["method_slugs"] == ["retriever", "random"] and r["runs_asked"] == 2 and r["profile"] == "smoke"
    assert r["speedup"] == 12.0 / 5.0
    assert (r["sequential"]["n_jobs"], r["parallel"]["n_jobs"], r["parallel"]["lanes"]) == (1, 2, 2)
    assert [c[c.index("--backend") + 1] for c in seen] == ["sequential", "loky"]
    assert r["sequential"]["threads_per_lane"] == os.cpu_count() and r["parallel"]["threads_per_lane"] == max(
        1, os.cpu_count() // 2)  # the suite's own default
    pinned = measure_suite("ml-100k", "smoke", "reference", n_jobs=2, threads=1)
    assert pinned["sequential"]["threads_per_lane"] == pinned["parallel"]["threads_per_lane"] == 1
    assert all(c[c.index("--threads") + 1] == "1" for c in seen[2:])
    with pytest.raises(UserInputError, match="--n-jobs must be >= 2"):
        measure_suite("ml-100k", "smoke", "reference", n_jobs=1)
