"""benchmark.summary: which references a DNR run is tested against."""
from __future__ import annotations

import pandas as pd

from benchmark.summary import first_epoch_runs, references


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
