"""SASRec, Caser, GRU4Rec (methods.md §2.1–2.3) as RecBole's own models, on real ml-100k lists."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from baselines import recbole_adapter
from baselines.sequential import right_padded
from benchmark import registry
from benchmark.config import resolve_run_config
from benchmark.errors import ConfigError
from helpers import build, scores

ROOT = Path(__file__).resolve().parents[1]
SLUGS = {"sasrec": "SASRec", "caser": "Caser", "gru4rec": "GRU4Rec"}
RECBOLE_MODULES = {"SASRec": "sasrec", "Caser": "caser", "GRU4Rec": "gru4rec"}
IMPORTS_RECBOLE = re.compile(r"^\s*(import\s+recbole|from\s+recbole[\s.])|import_module\(\s*[\"']recbole|"
                             r"__import__\(\s*[\"']recbole", re.MULTILINE)




def with_history(batch, hist_items, hist_len=None):
    return dataclasses.replace(batch, hist_items=hist_items, hist_len=batch.hist_len if hist_len is None else hist_len)


def test_only_the_adapter_imports_recbole():
    offenders = [str(path.relative_to(ROOT)) for path in sorted(ROOT.rglob("*.py"))
                 if ".venv" not in path.parts and IMPORTS_RECBOLE.search(path.read_text(encoding="utf-8"))]
    assert offenders == ["baselines/recbole_adapter.py"]
    # and the pattern does find a real import (the scan itself can fail)
    assert IMPORTS_RECBOLE.search("def f():\n    from recbole.model import x\n")


def test_importing_the_methods_does_not_import_recbole():
    code = "import sys, baselines, benchmark.registry as r; r.available(); print('recbole' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("slug", SLUGS)
def test_registered_as_sequential_baselines(slug):
    entry = registry.get(slug)
    assert entry.family == "sequential" and "baselines" in entry.groups
    assert slug in registry.resolve(["baselines"])
    assert entry.hyperparameters()["hidden"] == 128 and "dropout" in entry.hyperparameters()


@pytest.mark.parametrize("slug,name", SLUGS.items())
def test_wrapped_module_is_recboles_class(tiny_spec, slug, name):
    model = build(slug, tiny_spec)
    module = sys.modules[f"recbole.model.sequential_recommender.{RECBOLE_MODULES[name]}"]
    assert type(model.net) is getattr(module, name)
    assert isinstance(model.net, sys.modules["recbole.model.abstract_recommender"].SequentialRecommender)
    # RecBole's tables: padding row 0 + our items 1..n_items
    assert model.net.item_embedding.num_embeddings == tiny_spec.n_items + 1
    assert model.net.item_embedding.embedding_dim == 128


def test_hyperparameters_reach_recbole(tiny_spec):
    sasrec = build("sasrec", tiny_spec, n_layers=3, dropout=0.2)
    assert sasrec.net.n_layers == 3 and len(sasrec.net.trm_encoder.layer) == 3
    assert sasrec.net.hidden_dropout_prob == 0.2 and sasrec.net.attn_dropout_prob == 0.2
    assert build("sasrec", tiny_spec, attn_dropout=0.1).net.attn_dropout_prob == 0.1
    assert sasrec.net.max_seq_length == tiny_spec.history_len
    caser = build("caser", tiny_spec, window=7, nh=3)
    assert caser.net.max_seq_length == 7 and len(caser.net.conv_h) == 7 and caser.net.n_h == 3
    assert caser.net.user_embedding.num_embeddings == tiny_spec.n_users + 1
    gru = build("gru4rec", tiny_spec, dropout=0.1, gru_hidden=64)
    assert gru.net.dropout_prob == 0.1 and gru.net.gru_layers.hidden_size == 64


def test_dataset_dropout_and_set_override_through_the_config_layer():
    cfg = resolve_run_config("ml-100k", "sasrec", settings={"sasrec": {"n_layers": 3}})
    assert cfg.model["n_layers"] == 3
    assert cfg.model["dropout"] == 0.3  # benchmark/configs/ml-100k.toml [model] dropout (paper Table 7)
    assert resolve_run_config("ml-100k", "gru4rec").model["dropout"] == 0.3
    with pytest.raises(ConfigError, match="n_layer"):
        resolve_run_config("ml-100k", "caser", settings={"caser": {"n_layers": 3}})


def test_unknown_recbole_model_is_an_error():
    with pytest.raises(ValueError, match="unknown RecBole sequential model 'BERT4Rec'"):
        recbole_adapter.model_class("BERT4Rec")
    with pytest.raises(ValueError, match="missing"):
        recbole_adapter.build_model("SASRec", n_items=10, n_users=3, max_len=5, params={"hidden_size": 8})


def test_right_padded_layout():
    hist = torch.tensor([[0, 0, 0, 7, 8], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [0, 0, 0, 0, 9]])
    length = torch.tensor([2, 5, 0, 1])
    seq, n = right_padded(hist, length, 5)
    assert seq.tolist() == [[7, 8, 0, 0, 0], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0], [9, 0, 0, 0, 0]]
    assert n.tolist() == [2, 5, 0, 1]
    seq, n = right_padded(hist, length, 3)  # the last 3 items only
    assert seq.tolist() == [[7, 8, 0], [3, 4, 5], [0, 0, 0], [9, 0, 0]] and n.tolist() == [2, 3, 0, 1]
    seq, n = right_padded(hist, length, 7)  # window longer than the stored history
    assert seq.tolist()[1] == [1, 2, 3, 4, 5, 0, 0] and n.tolist() == [2, 5, 0, 1]


@pytest.mark.parametrize("slug", SLUGS)
def test_never_reads_the_retriever_score(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    assert not model.uses_retriever_score
    nan_scores = dataclasses.replace(tiny_batch, scores=torch.full_like(tiny_batch.scores, torch.nan))
    assert torch.equal(scores(model, nan_scores), scores(model, tiny_batch))


@pytest.mark.parametrize("slug", SLUGS)
def test_pointwise_in_the_candidates(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3))
    permuted = dataclasses.replace(tiny_batch, **{f: getattr(tiny_batch, f)[:, perm]
                                                  for f in ("items", "scores", "labels", "mask")})
    base = scores(model, tiny_batch)
    assert torch.allclose(scores(model, permuted), base[:, perm], atol=1e-5)
    # scores are not all equal, so the check above has something to compare
    assert base.std(dim=1).min() > 0


@pytest.mark.parametrize("slug", SLUGS)
def test_scores_depend_on_the_history(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    has_history = tiny_batch.hist_len > 0
    assert has_history.sum() > 10
    # replace the most recent history item by another real item
    changed = tiny_batch.hist_items.clone()
    changed[:, -1] = torch.where(has_history, changed[:, -1] % tiny_spec.n_items + 1, changed[:, -1])
    diff = (scores(model, with_history(tiny_batch, changed)) - scores(model, tiny_batch)).abs().amax(dim=1)
    assert (diff[has_history] > 1e-6).all()
    assert (diff[~has_history] == 0).all()


@pytest.mark.parametrize("slug", SLUGS)
def test_empty_history_gives_finite_scores(tiny_spec, tiny_batch, slug):
    model = build(slug, tiny_spec)
    empty = with_history(tiny_batch, torch.zeros_like(tiny_batch.hist_items), torch.zeros_like(tiny_batch.hist_len))
    out = scores(model, empty)
    assert out.shape == (64, 50) and torch.isfinite(out).all()
    model.train()
    loss = model.loss(empty)
    loss = sum(loss.values()) if isinstance(loss, dict) else loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_caser_reads_only_the_last_window_items(tiny_spec, tiny_batch):
    model = build("caser", tiny_spec, window=5)
    long = tiny_batch.hist_len > 5
    assert long.sum() > 10
    older = tiny_batch.hist_items.clone()
    older[:, :-5] = torch.where(older[:, :-5] > 0, older[:, :-5] % tiny_spec.n_items + 1, older[:, :-5])
    assert torch.equal(scores(model, with_history(tiny_batch, older)), scores(model, tiny_batch))
    recent = tiny_batch.hist_items.clone()
    recent[:, -5] = recent[:, -5] % tiny_spec.n_items + 1
    diff = (scores(model, with_history(tiny_batch, recent)) - scores(model, tiny_batch)).abs().amax(dim=1)
    assert (diff[long] > 1e-6).all()
    # SASRec, by contrast, reads the older items too
    sasrec = build("sasrec", tiny_spec)
    diff = (scores(sasrec, with_history(tiny_batch, older)) - scores(sasrec, tiny_batch)).abs().amax(dim=1)
    assert (diff[long] > 1e-6).all()


def test_caser_uses_the_user_id_and_user_zero_is_trained(tiny_spec, tiny_batch):
    model = build("caser", tiny_spec)
    other_user = dataclasses.replace(tiny_batch, user=(tiny_batch.user + 1) % tiny_spec.n_users)
    assert not torch.allclose(scores(model, other_user), scores(model, tiny_batch))
    # our user 0 is RecBole row 1, not its padding row 0 (which gets no gradient)
    model.train()
    batch = dataclasses.replace(tiny_batch, user=torch.zeros_like(tiny_batch.user))
    model.loss(batch)["bce"].backward()  # the regulariser touches every row, the lookup only row 1
    grad = model.net.user_embedding.weight.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2:].abs().sum() == 0
    for slug in ("sasrec", "gru4rec"):
        plain = build(slug, tiny_spec)
        assert torch.equal(scores(plain, other_user), scores(plain, tiny_batch))


def test_caser_loss_adds_recboles_regulariser(tiny_spec, tiny_batch):
    model = build("caser", tiny_spec, reg_weight=1e-2)
    parts = model.loss(tiny_batch)
    assert set(parts) == {"bce", "reg"}
    net = model.net
    norms = sum(w.norm(2) for w in (net.user_embedding.weight, net.item_embedding.weight, net.conv_v.weight,
                                      net.fc1.weight, net.fc2.weight))
    conv_h = sum(conv.weight.norm(2) for conv in net.conv_h)
    assert torch.allclose(parts["reg"], 1e-2 * (norms + conv_h))
    assert build("caser", tiny_spec, reg_weight=0.0).loss(tiny_batch)["reg"] == 0


@pytest.mark.parametrize("slug", SLUGS)
def test_runs_with_the_installed_numpy_and_pandas(tiny_spec, tiny_batch, slug):
    assert int(np.__version__.split(".")[0]) >= 2 and int(pd.__version__.split(".")[0]) >= 3
    assert not hasattr(np, "float_")  # no NumPy 1 alias leaked into the process
    model = build(slug, tiny_spec)
    model.train()
    loss = model.loss(tiny_batch)
    loss = sum(loss.values()) if isinstance(loss, dict) else loss
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores(model, tiny_batch)).all()


def test_numpy_aliases_are_local_to_the_recbole_pipeline():
    before = {name: np.__dict__.get(name) for name in ("float_", "unicode_", "float", "int", "bool", "long")}
    with recbole_adapter.numpy_aliases_for_recbole():
        assert np.float_ is np.float64 and np.unicode_ is np.str_
        np.float = np.float64  # what RecBole's Config.compatibility_settings does
    assert {name: np.__dict__.get(name) for name in before} == before
    assert not hasattr(np, "float_")
