"""``python -m benchmark --sweep KEY=V1,V2,...``: one results root per value, checked like ``--set``."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark import figures
from benchmark.cli import main, sweep_points, sweep_value_name
from benchmark.errors import UserInputError
from benchmark.store import RunSpec, read_record

# A fast dnr-b on the smoke profile: 256 training requests, a small backbone, one thread.
FAST = ("--set", "train.max_train_requests=256", "dnr-b.hidden=16", "dnr-b.n_layers=1")


@pytest.fixture
def run_cli(tmp_path, capsys):
    cache = tmp_path / "cache"

    def invoke(*args):
        code = main(["--results-dir", str(tmp_path / "results"), "--cache-dir", str(cache), "--quiet",
                     "--threads", "1", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def test_points_are_the_set_settings_plus_the_swept_value(tmp_path):
    settings = {"train": {"lr": 0.01}}
    points = sweep_points("dnr-b.alpha=0.1, 0.40,1", settings, ["dnr-b"], ["ml-100k"], "smoke", tmp_path)
    assert [p.name for p, _ in points] == ["dnr-b.alpha=0.1", "dnr-b.alpha=0.4", "dnr-b.alpha=1"]
    assert all(p.parent == tmp_path / "sweeps" for p, _ in points)
    assert [s["dnr-b"]["alpha"] for _, s in points] == [0.1, 0.4, 1]
    assert all(s["train"] == {"lr": 0.01} for _, s in points) and settings == {"train": {"lr": 0.01}}
    # a generic model key, swept for every selected method that has it
    points = sweep_points("model.switch_epoch=0,20", {}, ["dnr-b", "dnr-g"], ["ml-100k"], "paper", tmp_path)
    assert [p.name for p, _ in points] == ["model.switch_epoch=0", "model.switch_epoch=20"]


def test_value_names_are_canonical_and_safe():
    assert [sweep_value_name(v) for v in (0.1, 0.10, 1.0, 40, True, "kl")] == ["0.1", "0.1", "1", "40", "true",
                                                                              "kl"]
    for bad in ([1, 2], {"a": 1}, "../x", ".hidden"):
        with pytest.raises(UserInputError, match="sweep values"):
            sweep_value_name(bad)


BASE = ("--methods", "dnr-b", "--dataset", "ml-100k", "--profile", "smoke")


@pytest.mark.parametrize("args, needle", [
    ((*BASE, "--sweep", "dnr-b.alpha"), "expected KEY=V1,V2"),
    ((*BASE, "--sweep", "alpha=0.1,0.2"), "KEY must be section.name"),
    ((*BASE, "--sweep", "dnr-b.alpha=0.1,,0.2"), "without empty items"),
    ((*BASE, "--sweep", "dnr-b.alpha=0.1,0.10"), "repeats"),
    ((*BASE, "--sweep", "dnr-b.alpha=0.1,0.2", "--set", "dnr-b.alpha=0.3"), "also given in --set"),
    ((*BASE, "--sweep", "model.alpha=0.1,0.2", "--set", "dnr-b.alpha=0.3"), "would override the swept model.alpha"),
    (("--methods", "prm", "--dataset", "ml-100k", "--sweep", "dnr-b.alpha=0.1,0.2"), "not among the selected"),
    (("--methods", "prm,dnr-b", "--dataset", "ml-100k", "--sweep", "model.alpha=0.1,0.2"), "does not change prm"),
    ((*BASE, "--sweep", "dnr-b.alfa=0.1,0.2"), "did you mean 'alpha'"),
    ((*BASE, "--sweep", "dnr-b.switch_epoch=1.5,2"), "switch_epoch"),
    ((*BASE, "--sweep", "model.nope=1,2"), "model.nope"),
    ((*BASE, "--sweep", "trian.lr=1,2"), "trian"),
    ((*BASE, "--sweep", "dnr-b.reg_form=a/b"), "sweep values"),
    ((*BASE, "--sweep", "dnr-b.alpha=0.1,0.2", "--sweep", "dnr-b.lam=0.1,0.2"), "one --sweep per call"),
])
def test_bad_sweeps_exit_2_before_anything_runs(run_cli, tmp_path, args, needle):
    code, out, err = run_cli(*args)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "results").exists() and "runs asked for" not in out


def test_sweep_end_to_end_resumes_per_point_and_draws_figure_3(run_cli, tmp_path):
    results = tmp_path / "results"
    code, out, _ = run_cli(*BASE, *FAST, "--sweep", "dnr-b.alpha=0.2,0.4")
    assert code == 0, out
    assert out.count("0 already finished, 1 to run") == 2 and out.count(": ok in") == 2
    for value in (0.2, 0.4):
        root = results / "sweeps" / f"dnr-b.alpha={value}"
        record = read_record(root, RunSpec("ml-100k", "dnr-b", 0))
        assert record["status"] == "ok" and record["config"]["model"]["alpha"] == value
        assert record["config"]["model"]["hidden"] == 16  # the --set settings apply to every point
    assert not (results / "runs").exists()  # main results are never mixed with sweep points

    code, out, _ = run_cli(*BASE, *FAST, "--sweep", "dnr-b.alpha=0.4,0.2,0.6")  # finished points are skipped
    assert code == 0 and out.count("1 already finished, 0 to run") == 2 and out.count("0 already finished") == 1

    frame = figures.sensitivity_frame(results)
    assert sorted(frame["value"]) == [0.2, 0.4, 0.6] and set(frame["key"]) == {"dnr-b.alpha"}
    files = figures.render_all(results, tmp_path / "figures")
    assert {f.name for f in files} >= {"fig3_sensitivity.png", "fig3_sensitivity.pdf"}
    assert all(Path(f).stat().st_size > 0 for f in files)

    # a point that fails is recorded and the exit code says so, as for a normal run
    code, out, _ = run_cli(*BASE, *FAST, "--sweep", "dnr-b.alpha=1.5")
    failed = read_record(results / "sweeps" / "dnr-b.alpha=1.5", RunSpec("ml-100k", "dnr-b", 0))
    assert code == 1 and failed["status"] == "failed" and "alpha" in failed["error"]
    assert len(figures.sensitivity_frame(results)) == 3  # a failed run is not a point
