"""benchmark.figures on synthetic records whose plotted numbers are known by construction.

Records are written with ``store.write_record`` with the fields the figures read (config, test and
validation metrics, history with DNR's noise histograms, timings, environment); the sweep points
live under ``sweeps/<KEY>=<V>/`` as ``python -m benchmark --sweep`` writes them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark import figures, store
from benchmark.errors import UserInputError
from benchmark.store import RunSpec
from benchmark.summary import METRICS, records_frame

BINS = 20
WIDTH = 1.0 / BINS


def _hist(peak: int, n: int = 1000) -> dict:
    """A histogram with most mass in bin ``peak`` and one count in every other bin."""
    counts = np.ones(BINS, dtype=int)
    counts[peak] = n - (BINS - 1)
    return {"hist": counts.tolist(), "mean": (peak + 0.5) * WIDTH, "std": 0.1, "n": n}


def _noise(generator: str, heuristic: str, eps_peak: int, real_peak: int = 19, alpha: float = 0.4) -> dict:
    return {"generator": generator, "heuristic": heuristic, "alpha": alpha, "bins": BINS, "range": [0.0, 1.0],
            "eps": _hist(eps_peak), "eps_real": _hist(real_peak), "abs_gap": _hist(10), "crossed": 0.0}


def _history(vals, stage="main", noise=None) -> list[dict]:
    """One entry per validation N@6 in ``vals``; ``noise``: per epoch, the noise dict (or None)."""
    out = []
    for epoch, v in enumerate(vals, 1):
        entry = {"stage": stage, "epoch": epoch, "seconds": 1.0, "train_loss": {},
                 "val": {m: v for m in METRICS}}
        if noise is not None:
            entry["noise"] = noise[epoch - 1]
        out.append(entry)
    return out


def write(root, dataset, method, seed, n6, *, history=None, best_epoch=None, sec=2.0, profile="paper",
          model=None, train=None, host="box", status="ok"):
    # every epoch takes ``sec``, so the record's mean and the figures' median epoch agree
    history = [] if history is None else [{**h, "seconds": sec} for h in history]
    record = {
        "status": status, "config_hash": "h",
        "config": {"dataset": dataset, "method": method, "profile": profile, "data": {"fill": "topk"},
                   "train": {"lr": 1e-3, **(train or {})}, "model": dict(model or {})},
        "metrics": {"test": {m: n6 for m in METRICS}, "val": {m: n6 for m in METRICS}},
        "epochs_run": len(history), "best_epoch": best_epoch if best_epoch is not None else len(history),
        "history": history, "seconds_per_epoch": sec if history else None,
        "train_seconds": sec * len(history), "rank_derived_auc": False,
        "environment": {"host": host, "device": "cpu", "torch_threads": 1},
    }
    if status != "ok":
        record = {"status": status, "config": record["config"], "error": "boom"}
    store.write_record(root, RunSpec(dataset, method, seed), record)


def sweep_point(results, key, value_text):
    return results / "sweeps" / f"{key}={value_text}"


# Figure 3's known answers: N@6 per (value, seed) of dnr-b.switch_epoch on ml-1m
SWITCH = {2: [0.50, 0.52, 0.57], 10: [0.60, 0.62]}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Main runs on ml-1m (DNR family with noise, PRM, a two-stage method, the retriever) and
    kuairand (PRM only), and sweeps of dnr-b.switch_epoch (several seeds) and dnr-b.lam."""
    root = tmp_path_factory.mktemp("results")
    beta, gauss = "Beta(0.5, 0.5)", "N(0, 1)"
    write(root, "ml-1m", "dnr-b", 0, 0.70, best_epoch=2, history=_history(
        [0.60, 0.66, 0.65, 0.64], noise=[_noise("heuristic", beta, 0), _noise("heuristic", beta, 0),
                                         _noise("learned", beta, 7), _noise("learned", beta, 8)]))
    write(root, "ml-1m", "dnr-b", 1, 0.72, best_epoch=1, history=_history(
        [0.61, 0.60], noise=[_noise("learned", beta, 3), _noise("learned", beta, 3)]))
    write(root, "ml-1m", "dnr-g", 0, 0.69, best_epoch=2, history=_history(
        [0.60, 0.67], noise=[_noise("heuristic", gauss, 0), _noise("learned", gauss, 5)]))
    write(root, "ml-1m", "dnr-b-heuristic", 0, 0.68, best_epoch=1, history=_history(
        [0.62, 0.61], noise=[_noise("heuristic", beta, 19), _noise("heuristic", beta, 18)]))
    write(root, "ml-1m", "prm", 0, 0.66, sec=1.0, history=_history([0.55, 0.63, 0.62]), best_epoch=2)
    write(root, "ml-1m", "prm", 1, 0.64, sec=3.0, history=_history([0.55, 0.61]), best_epoch=2)
    write(root, "ml-1m", "egrerank", 0, 0.60, best_epoch=1,
          history=_history([0.40, 0.50, 0.45], stage="evaluator") + _history([0.58, 0.57], stage="generator"))
    write(root, "ml-1m", "retriever", 0, 0.30)
    write(root, "ml-1m", "sasrec", 0, 0.50, status="failed")
    write(root, "kuairand", "prm", 0, 0.55, history=_history([0.50, 0.52]))
    for value, n6s in SWITCH.items():
        for seed, n6 in enumerate(n6s):
            write(sweep_point(root, "dnr-b.switch_epoch", value), "ml-1m", "dnr-b", seed, n6,
                  history=_history([n6]), model={"alpha": 0.4, "switch_epoch": value})
    write(sweep_point(root, "dnr-b.switch_epoch", 10), "ml-1m", "dnr-b", 3, 0.10, status="failed",
          model={"switch_epoch": 10})
    for value, n6 in ((0.2, 0.40), (0.8, 0.45)):
        write(sweep_point(root, "dnr-b.lam", value), "ml-1m", "dnr-b", 0, n6, history=_history([n6]),
              model={"lam": value})
    (root / "sweeps" / "notes").mkdir()  # not a KEY=V folder: ignored
    return root


def test_sensitivity_means_match_hand_computed_values(results):
    frame = figures.sensitivity_frame(results)
    assert set(frame["key"]) == {"dnr-b.switch_epoch", "dnr-b.lam"}
    assert len(frame) == 5 + 2  # the failed run is not a point
    summary = figures.sensitivity_summary(frame)
    line = summary[summary["key"] == "dnr-b.switch_epoch"]
    assert line["value"].tolist() == [2, 10]  # by size, although "10" sorts before "2" as a folder name
    for (_, row), n6s in zip(line.iterrows(), SWITCH.values()):
        assert row["mean"] == pytest.approx(np.mean(n6s)) and row["n"] == len(n6s)
        assert (row["min"], row["max"]) == (min(n6s), max(n6s))
        assert row["std"] == pytest.approx(np.std(n6s, ddof=1))
    lam = summary[summary["key"] == "dnr-b.lam"]
    assert lam["value"].tolist() == [0.2, 0.8] and lam["std"].isna().all() and (lam["n"] == 1).all()
    # the sweep points never leak into the main results
    assert len(records_frame(results)) == 9


def test_a_line_never_mixes_runs_whose_other_settings_differ(tmp_path):
    write(sweep_point(tmp_path, "model.alpha", 0.1), "ml-1m", "dnr-b", 0, 0.5, model={"alpha": 0.1})
    write(sweep_point(tmp_path, "model.alpha", 0.2), "ml-1m", "dnr-b", 0, 0.6, model={"alpha": 0.2})
    write(sweep_point(tmp_path, "model.alpha", 0.2), "ml-1m", "dnr-b", 1, 0.7, model={"alpha": 0.2},
          train={"lr": 1e-4})
    summary = figures.sensitivity_summary(figures.sensitivity_frame(tmp_path))
    assert summary["context"].nunique() == 2
    same = summary[summary["n"] == 1].groupby("context")["value"].apply(list)
    assert sorted(map(sorted, same)) == [[0.1, 0.2], [0.2]]


def test_default_value_is_what_the_main_runs_use():
    assert figures.default_value("dnr-b.alpha", "kuairand", "dnr-b") == 0.3  # configs/kuairand.toml
    assert figures.default_value("model.alpha", "ml-1m", "dnr-b") == 0.4
    assert figures.default_value("dnr-b.switch_epoch", "ml-1m", "dnr-b", "smoke") == 1  # the smoke profile's
    assert figures.default_value("train.lr", "ml-1m", "prm") == 1e-3
    assert figures.default_value("model.alpha", "ml-1m", "prm") is None


def test_noise_densities_integrate_to_one_and_equal_count_over_n_width(results):
    record = store.read_record(results, RunSpec("ml-1m", "dnr-b", 0))
    dens = figures.noise_densities(record)  # default: the selected epoch (2, heuristic)
    assert dens.epoch == 2 and dens.generator == "heuristic" and dens.heuristic == "Beta(0.5, 0.5)"
    np.testing.assert_allclose(dens.edges, np.linspace(0, 1, BINS + 1))
    for name in ("eps", "eps_real", "abs_gap"):
        assert float(np.sum(dens.density[name] * np.diff(dens.edges))) == pytest.approx(1.0)
    assert dens.density["eps"][0] == pytest.approx((1000 - 19) / (1000 * WIDTH))
    assert figures.noise_densities(record, epoch=4).density["eps"].argmax() == 8
    with pytest.raises(UserInputError, match="no noise histograms logged at epoch 9"):
        figures.noise_densities(record, epoch=9)
    with pytest.raises(UserInputError, match="prm"):
        figures.noise_densities(store.read_record(results, RunSpec("ml-1m", "prm", 0)))


def test_noise_curves_pick_honest_epochs_and_sources(results):
    records = [r for r in store.all_records(results) if r["status"] == "ok" and r["dataset"] == "ml-1m"]
    curves = {c.kind + ":" + c.source.method: c for c in figures.noise_curves(records)}
    assert list(curves) == ["heuristic:dnr-b-heuristic", "heuristic:dnr-g", "learned:dnr-b", "learned:dnr-g",
                            "real:dnr-b"]
    # the Gaussian heuristic of DNR-G: the only epoch it was used (the selected epoch 2 was learned)
    assert curves["heuristic:dnr-g"].source.epoch == 1 and "N(0, 1)" in curves["heuristic:dnr-g"].label
    # Beta heuristic: from the heuristic-only run (seed 0, its selected epoch), not DNR-B's first epochs
    assert curves["heuristic:dnr-b-heuristic"].source.epoch == 1
    assert curves["heuristic:dnr-b-heuristic"].density.argmax() == 19
    # DNR-B seed 0 selected epoch 2, before f_φ took over: the learned curve is its last learned epoch
    learned = curves["learned:dnr-b"]
    assert (learned.source.seed, learned.source.epoch, learned.source.generator) == (0, 4, "learned")
    assert "learned" in learned.label and "ep 4" in learned.label and learned.density.argmax() == 8
    real = curves["real:dnr-b"]
    assert real.histogram == "eps_real" and real.source is learned.source and real.density.argmax() == 19


def test_validation_frame_marks_the_selected_epoch_of_the_final_stage(results):
    records = [r for r in store.all_records(results) if r["status"] == "ok" and r["dataset"] == "ml-1m"]
    frame = figures.validation_frame(records)
    eg = frame[frame["method"] == "egrerank"]
    assert eg["step"].tolist() == [1, 2, 3, 4, 5]
    assert eg.loc[eg["best"], ["stage", "epoch", "step"]].values.tolist() == [["generator", 1, 4]]
    prm = frame[frame["method"] == "prm"]
    assert set(prm["seed"]) == {0} and prm.loc[prm["best"], "step"].tolist() == [2]
    assert "retriever" not in set(frame["method"])  # nothing trained, so no curve
    # epochs a stage did not validate (Stage.eval_every) have no point; the steps keep counting epochs
    sparse = {"method": "diffurec", "seed": 0, "best_epoch": 4, "history": [
        {"stage": "main", "epoch": e, **({"val": {"N@6": e / 10}} if e % 2 == 0 else {})} for e in range(1, 6)]}
    frame = figures.validation_frame([sparse])
    assert frame["step"].tolist() == [2, 4] and frame["val"].tolist() == [0.2, 0.4]
    assert frame["best"].tolist() == [False, True]


def test_cost_frame_averages_over_seeds(results):
    records = [r for r in store.all_records(results) if r["status"] == "ok"]
    cost = figures.cost_frame(records).set_index(["dataset", "method"])
    assert cost.loc[("ml-1m", "prm"), "sec_per_epoch"] == pytest.approx(2.0)
    assert cost.loc[("ml-1m", "prm"), "N@6"] == pytest.approx(0.65) and cost.loc[("ml-1m", "prm"), "n"] == 2
    assert pd.isna(cost.loc[("ml-1m", "retriever"), "sec_per_epoch"])
    assert cost.loc[("ml-1m", "prm"), "machines"] == 1


def test_render_all_writes_every_figure_deterministically(results, tmp_path):
    files = figures.render_all(results, tmp_path / "a", ["ml-1m", "kuairand"])
    names = sorted(f.name for f in files)
    expected = ["cost_quality", "fig3_sensitivity", "fig5_noise", "validation_kuairand", "validation_ml-1m"]
    assert names == sorted(f"{n}.{ext}" for n in expected for ext in ("png", "pdf"))
    for f in files:
        head = f.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if f.suffix == ".png" else b"%PDF"), f
        assert f.stat().st_size > 5000, f
    again = figures.render_all(results, tmp_path / "b", ["kuairand"])  # no timestamps: same figure, same bytes
    assert {f.name: f.read_bytes() for f in again if "validation" in f.name} == {
        f.name: f.read_bytes() for f in files if "validation_kuairand" in f.name}
    # the cost figure's labels are moved apart by an iterative solver: bounded by iterations, not by
    # wall time, so a busy machine draws the same figure
    cost_again = figures.render_all(results, tmp_path / "c", ["ml-1m", "kuairand"])
    assert {f.name: f.read_bytes() for f in cost_again if "cost" in f.name} == {
        f.name: f.read_bytes() for f in files if "cost" in f.name}
    # drawn, but with a panel left out, and the reason is given
    assert figures.skipped(results, ["ml-1m", "kuairand"]) == {
        "fig5_noise/kuairand": "no finished DNR run with logged noise histograms"}


def test_cost_figure_keeps_crowded_labels_apart():
    """Eight methods within 1 % of each other's cost and N@6: every name stays readable
    (no two label boxes overlap), and every label is still in its panel."""
    methods = ["prm", "mir", "setrank", "dlcm", "dnr-b", "dnr-g", "prm-c-score", "prm-w-score"]
    part = pd.DataFrame({"dataset": "kuairand", "method": methods, "family": "refinement",
                         "N@6": [0.160 + 0.0003 * i for i in range(8)],
                         "sec_per_epoch": [20.0 + 0.2 * i for i in range(8)]})
    fig = figures._draw_cost({"kuairand": part}, {"kuairand": {"retriever": 0.14}}, {"kuairand": 1})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(methods)
    overlapping = [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert overlapping == []
    panel = ax.get_window_extent(renderer)
    assert all(panel.contains(b.x0, b.y0) and panel.contains(b.x1, b.y1) for b in boxes)


def test_figures_without_inputs_are_skipped_with_a_reason(tmp_path):
    write(tmp_path, "ml-1m", "prm", 0, 0.6, history=_history([0.5, 0.6]))
    files = figures.render_all(tmp_path, tmp_path / "out")
    assert sorted({f.stem for f in files}) == ["cost_quality", "validation_ml-1m"]
    why = figures.skipped(tmp_path)
    assert set(why) == {"fig3_sensitivity", "fig5_noise"}
    assert "--sweep" in why["fig3_sensitivity"] and "DNR" in why["fig5_noise"]

    empty = tmp_path / "empty"
    assert figures.render_all(empty, tmp_path / "none") == [] and not (tmp_path / "none").exists()
    assert set(figures.skipped(empty)) == {"fig3_sensitivity", "fig5_noise", "cost_quality"}


def test_command_line_prints_files_and_what_was_not_drawn(results, tmp_path, capsys):
    assert figures.main(["--results-dir", str(results), "--out-dir", str(tmp_path), "--datasets", "kuairand"]) == 0
    out = capsys.readouterr().out
    assert "validation_kuairand.png" in out and "not drawn: fig5_noise:" in out
    assert "not drawn: fig3_sensitivity:" in out  # the sweeps are on ml-1m only


def test_every_dnr_group_has_its_own_validation_panel():
    """DNR rows split by registry group; a group renamed without its panel title would fall back to
    the main DNR panel silently."""
    from benchmark import registry

    dnr_groups = {g for e in registry.available().values() if e.family == "dnr" for g in e.groups}
    assert dnr_groups <= set(figures.PANEL_NAMES)
    assert figures._panel("dnr-pier") == figures._panel("dnr-pier-g") == "DNR on PIER"
    assert figures._panel("dnr-b") == "DNR (ours)" and figures._panel("dnr-large") == "Larger backbone (Table 10)"
