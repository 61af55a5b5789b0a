"""benchmark.summary: which references a DNR run is tested against."""
from __future__ import annotations

from benchmark.summary import references


def test_dnr_is_tested_against_its_own_backbone_and_its_score_variants():
    assert references("dnr-b") == ["prm", "prm-c-score", "prm-plus-score", "prm-w-score"]
    assert references("dnr-pier") == ["pier", "pier-c-score", "pier-plus-score", "pier-w-score"]
    assert references("dnr-pier-g")[0] == "pier" and references("dnr-large")[0] == "prm"
