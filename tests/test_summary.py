"""benchmark.summary: which references a DNR run is tested against."""
from __future__ import annotations

import pandas as pd

from benchmark.summary import epoch_seconds, first_epoch_runs, references


def test_dnr_is_tested_against_its_own_backbone_and_its_score_variants():
    assert references("dnr-b") == ["prm", "prm-c-score", "prm-plus-score", "prm-w-score"]
    assert references("dnr-pier") == ["pier", "pier-c-score", "pier-plus-score", "pier-w-score"]
    assert references("dnr-pier-g")[0] == "pier" and references("dnr-large")[0] == "prm"


def test_runs_that_kept_their_first_epoch_are_flagged():
    frame = pd.DataFrame({"method": ["gru4rec", "prm", "retriever", "caser"], "seed": [0, 0, 0, 1],
                          "best_epoch": [1, 78, 0, 1], "epochs": [11, 88, 0, 1]})
    # a 1-epoch run (smoke) and an untrained reference row are not flagged
    assert first_epoch_runs(frame) == ["gru4rec seed 0"]


def test_first_validated_epoch_is_the_one_compared():
    from benchmark.summary import first_validated_epoch

    every5 = [{"stage": "main", "epoch": e, **({"val": {}} if e % 5 == 0 else {})} for e in range(1, 16)]
    two_stages = [{"stage": "evaluator", "epoch": 1, "val": {}}, {"stage": "generator", "epoch": 1, "val": {}}]
    assert first_validated_epoch(every5) == 5 and first_validated_epoch(two_stages) == 1
    assert first_validated_epoch([]) == 1
    frame = pd.DataFrame({"method": ["diffurec", "diffurec", "prm"], "seed": [0, 1, 0], "best_epoch": [5, 10, 1],
                          "epochs": [15, 20, 11], "first_validated": [5, 5, 1]})
    assert first_epoch_runs(frame) == ["diffurec seed 0", "prm seed 0"]


def _frame(**columns):
    base = {"method": ["prm", "gru4rec", "retriever"], "seed": [0, 0, 0], "dataset": ["kuairand"] * 3,
            "epochs": [88, 11, 0], "max_epochs": [200, 200, 200], "best_epoch": [78, 1, 0],
            "patience_steps": [30.0, 30.0, None],
            "train_settings": ["batch size 2048, patience 10"] * 2 + ["batch size 256, patience 10"]}
    base.update(columns)
    return pd.DataFrame(base)


def test_runs_stopped_with_a_patience_of_few_steps_are_flagged():
    from benchmark.config import TrainConfig
    from benchmark.summary import MIN_PATIENCE_STEPS, short_patience_runs

    # KuaiRand at the paper's batch: 4,937 requests are 3 steps of 2,048, so patience 10 counted in
    # epochs only (records made before train.min_patience_steps) was 30 steps
    assert TrainConfig(batch_size=2048, patience=10, min_patience_steps=0).patience_steps(4937) == 30 < MIN_PATIENCE_STEPS
    assert TrainConfig(batch_size=2048, patience=10).patience_steps(4937) == 150 == MIN_PATIENCE_STEPS
    assert short_patience_runs(_frame()) == ["gru4rec seed 0", "prm seed 0"]
    # a run that reached max_epochs was not stopped early, and a patient run is not flagged
    assert short_patience_runs(_frame(epochs=[200, 11, 0])) == ["gru4rec seed 0"]
    assert short_patience_runs(_frame(patience_steps=[150.0, 150.0, None])) == []


def test_datasets_trained_under_two_protocols_are_named():
    from benchmark.summary import mixed_settings

    # the untrained retriever row does not count: its train settings never applied
    assert mixed_settings(_frame()) == {}
    mixed = mixed_settings(_frame(epochs=[88, 11, 5], method=["prm", "gru4rec", "caser"]))
    assert mixed == {"kuairand": ["batch size 2048, patience 10: gru4rec, prm", "batch size 256, patience 10: caser"]}


def test_runs_ended_by_the_epoch_cap_while_improving_are_flagged():
    from benchmark.summary import capped_runs

    frame = _frame(epochs=[200, 200, 0], last_epoch=[200, 200, 0], best_epoch=[162, 120, 0],
                   patience_epochs=[50, 50, None])
    # gru4rec: 80 epochs without improvement before the cap, so patience would have ended it anyway
    assert capped_runs(frame) == ["prm seed 0 (best epoch 162 of 200)"]
    assert capped_runs(_frame(last_epoch=[88, 11, 0], patience_epochs=[50, 50, None])) == []
    assert capped_runs(_frame()) == []  # frames without the columns (older callers)


def test_method_table_reports_seed_means_and_the_seed_spread_of_ndcg():
    from benchmark.summary import METRICS, method_table

    rows = [{"method": "setrank", "seed": s, "epochs": e, "sec_per_epoch": 20.0, **{m: v for m in METRICS}}
            for s, e, v in [(0, 70, 0.15), (1, 72, 0.17)]]
    rows.append({"method": "prm", "seed": 0, "epochs": 150, "sec_per_epoch": 25.0, **{m: 0.2 for m in METRICS}})
    table = method_table(pd.DataFrame(rows))
    assert list(table.columns) == ["n", "H@6", "N@6", "N@6 sd", "M@6", "F1@6", "AUC", "epochs", "sec_per_epoch"]
    assert table.loc["setrank", "n"] == 2 and table.loc["setrank", "N@6"] == 16.0
    assert table.loc["setrank", "N@6 sd"] == round(100 * 0.02 / 2 ** 0.5, 2) == 1.41  # sample sd, ddof=1
    assert table.loc["setrank", "epochs"] == 71.0
    assert pd.isna(table.loc["prm", "N@6 sd"])  # one seed: no spread to report


def test_epoch_seconds_is_each_stages_median_so_a_paused_epoch_does_not_count():
    def entry(stage, seconds):
        return {"stage": stage, "epoch": 1, "seconds": seconds}

    # one epoch spanning a 30-minute pause: the mean would be 372 s, the run's cost is 10 s an epoch
    paused = {"seconds_per_epoch": 372.0, "history": [entry("main", 10.0)] * 4 + [entry("main", 1810.0)]}
    assert epoch_seconds(paused) == 10.0
    # two stages of different cost: each stage's median, weighted by its epochs (3 x 2 s + 1 x 8 s) / 4
    staged = {"seconds_per_epoch": 3.5, "history": [entry("evaluator", 2.0)] * 3 + [entry("generator", 8.0)]}
    assert epoch_seconds(staged) == 3.5
    # no times in the history (records of untrained methods, or made before times were logged)
    assert epoch_seconds({"seconds_per_epoch": 4.0, "history": []}) == 4.0
    assert epoch_seconds({"seconds_per_epoch": None}) is None
