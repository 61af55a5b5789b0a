"""Layered data configuration and --set parsing."""
from __future__ import annotations

import pytest

from benchmark.config import DataConfig, load_data_config, parse_set_options
from benchmark.errors import ConfigError


def test_set_values_are_toml():
    parsed = parse_set_options(["data.k_core=10", "data.fill=random", "data.mf_lr=0.01", "data.dedup=false",
                                "data.label='rating>=4'"])
    assert parsed == {"data": {"k_core": 10, "fill": "random", "mf_lr": 0.01, "dedup": False, "label": "rating>=4"}}


def test_layers_defaults_toml_overrides():
    assert load_data_config("ml-100k").k_core == 20  # configs/ml-100k.toml
    assert load_data_config("kuairand").k_core is None  # left to the source layout
    cfg = load_data_config("ml-100k", {"k_core": 7, "mf_lr": 1})
    assert cfg.k_core == 7 and cfg.mf_lr == 1.0 and isinstance(cfg.mf_lr, float)


@pytest.mark.parametrize("overrides, match", [
    ({"kcore": 5}, "unknown setting 'kcore'.*k_core"),
    ({"k_core": "five"}, "k_core"),
    ({"k_core": True}, "k_core"),
    ({"fill": "best"}, "fill"),
    ({"n_candidates": 6}, "n_candidates"),
    ({"mf_holdout": 1.5}, "mf_holdout"),
])
def test_bad_settings_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_data_config("ml-100k", overrides)


def test_digest_changes_with_any_field():
    assert DataConfig().digest() != DataConfig(fill="random").digest()
    assert DataConfig().digest() == DataConfig().digest()
