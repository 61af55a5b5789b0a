"""Layered data configuration and --set parsing."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmark.config import PROFILES, DataConfig, load_data_config, parse_set_options, resolve_run_config
from benchmark.data.lists import build_candidate_lists
from benchmark.errors import ConfigError
from conftest import ROOT


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


PIER_FAMILY = ("pier", "pier-c-score", "pier-plus-score", "pier-w-score")


@pytest.mark.parametrize("where, train, model, added", [
    ("results", {}, {}, {}),
    # made before train.min_patience_steps: `--set train.min_patience_steps=0` finds them finished;
    # and before EGRerank's reward default became "item": `--set model.reward=slate` for those;
    # and before PIER's ocpm_logged existed (OCPM then trained on the logged list, as ocpm_logged=true)
    ("results/archive/epoch-patience", {"min_patience_steps": 0}, {"egrerank": {"reward": "slate"}},
     {m: {"ocpm_logged": True} for m in PIER_FAMILY}),
])
def test_committed_records_are_still_finished_under_the_current_configuration(where, train, model, added):
    """Every committed record's config hash is the one this code resolves for its run (paper profile,
    the ``--set`` values it ran with): a new setting or a changed default must not silently turn the
    committed results into runs to redo (DataConfig.OMIT_AT_DEFAULT keeps later fields out of it).
    A deliberate change of a method's default is listed in ``model``, per method; a hyper-parameter
    a method gained after an archived record was made is listed in ``added`` with the value that
    reproduces the record (the record cannot hold the key; its hash is the config without it)."""
    records = sorted((ROOT / where / "runs").glob("*/*/seed*.json"))
    assert records, "no committed records"
    for path in records:
        record = json.loads(path.read_text())
        cfg = record["config"]
        default = resolve_run_config(cfg["dataset"], cfg["method"], "paper", {})
        later = added.get(cfg["method"], {})
        settings = {"data": {k: v for k, v in cfg["data"].items() if default.data.to_dict().get(k) != v},
                    "train": train, "model": {**model.get(cfg["method"], {}), **later}}
        resolved = resolve_run_config(cfg["dataset"], cfg["method"], cfg["profile"], settings)
        assert not set(later) & set(cfg["model"]), path
        resolved = dataclasses.replace(resolved, model={k: v for k, v in resolved.model.items() if k not in later})
        assert resolved.to_dict()["model"] == cfg["model"] and resolved.digest() == record["config_hash"], path
        if train:
            assert default.digest() != record["config_hash"], path  # outdated under the current default


def test_sample_users_is_taken_after_the_k_core_and_left_out_of_the_hash_when_unset(tmp_path):
    assert "sample_users" not in DataConfig().to_dict()
    assert DataConfig(sample_users=5).to_dict()["sample_users"] == 5
    assert DataConfig().digest() != DataConfig(sample_users=5).digest()
    with pytest.raises(ConfigError, match="sample_users"):
        DataConfig(sample_users=0).validate()
    # the smoke profile's lists on ml-100k: 150 users, each with the dataset's own 20-core history
    lists, _ = build_candidate_lists("ml-100k", cache_dir=tmp_path, overrides=PROFILES["smoke"]["data"])
    assert len(np.unique(lists.arrays["user"])) == 150


def test_a_wrapping_method_records_its_backbones_settings_so_they_are_in_its_hash(monkeypatch):
    """DNR's config holds every backbone hyper-parameter it does not set itself (``backbone_args``),
    so a changed backbone default is a new DNR config hash (the run is redone, not served stale)."""
    from benchmark import registry

    pier = resolve_run_config("kuairand", "dnr-pier").model["backbone_args"]
    assert pier["fpsm_teacher"] == "best" and pier["search"] == "fpsm" and "hidden" not in pier
    before = resolve_run_config("kuairand", "dnr-b")
    assert before.model["backbone_args"] == {"n_heads": 4, "ffn": 128, "causal": False, "user_layers": 1}
    entry = registry.get("prm")
    monkeypatch.setitem(registry._REGISTRY, "prm", dataclasses.replace(entry, defaults={"n_heads": 8}))
    after = resolve_run_config("kuairand", "dnr-b")
    assert after.model["backbone_args"]["n_heads"] == 8 and after.digest() != before.digest()


def test_backbone_keys_are_set_like_any_other_key():
    from benchmark.config import check_settings

    check_settings({"model": {"n_heads": 8}}, ["dnr-b"])  # a key only the backbone has
    # the pre-check reads the backbone the same settings choose: PIER's `keep` is settable for a
    # dnr-b moved onto PIER, and not for the PRM default
    check_settings({"dnr-b": {"backbone": "pier"}, "model": {"keep": 4}}, ["dnr-b"])
    check_settings({"model": {"backbone": "pier", "keep": 4}}, ["dnr-b"])
    moved = resolve_run_config("kuairand", "dnr-b", settings={"dnr-b": {"backbone": "pier"}, "model": {"keep": 4}})
    assert moved.model["backbone"] == "pier" and moved.model["backbone_args"]["keep"] == 4
    with pytest.raises(ConfigError, match="model.keep"):
        check_settings({"model": {"keep": 4}}, ["dnr-b"])
    both = parse_set_options(["model.n_heads=8"])
    assert resolve_run_config("kuairand", "prm", settings=both).model["n_heads"] == 8
    assert resolve_run_config("kuairand", "dnr-b", settings=both).model["backbone_args"]["n_heads"] == 8
    own = parse_set_options(["dnr-pier.keep=4"])
    assert resolve_run_config("kuairand", "dnr-pier", settings=own).model["backbone_args"]["keep"] == 4
    # a key the chosen backbone lacks is skipped when generic and an error when aimed at the method
    assert "keep" not in resolve_run_config("kuairand", "dnr-b", settings=parse_set_options(["model.keep=4"])
                                            ).model["backbone_args"]
    with pytest.raises(ConfigError, match="dnr-b .backbone prm. has no hyper-parameter 'n_head'.*n_heads"):
        resolve_run_config("kuairand", "dnr-b", settings=parse_set_options(["dnr-b.n_head=8"]))
    with pytest.raises(ConfigError, match="not backbone_args"):
        resolve_run_config("kuairand", "dnr-b", settings={"dnr-b": {"backbone_args": {"n_heads": 8}}})
    with pytest.raises(ConfigError, match="n_heads"):
        resolve_run_config("kuairand", "dnr-b", settings=parse_set_options(["dnr-b.n_heads='eight'"]))
