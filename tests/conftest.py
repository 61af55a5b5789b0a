"""Shared fixtures: the real datasets beside the checkout and a small, fast protocol setting."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny tensors on a shared 2-core machine: one thread is several times faster than two.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DNR_BENCH_TEST_DATA", ROOT.parent / "shared" / "datasets"))

# A real subset that builds in about a second: 150 ml-100k users, 5-core, a tiny short MF, and the
# protocol's first fill default (top-k; the dataset TOMLs select score-matched fillers), so that the
# tests' lists do not move when a dataset's configuration does.
SMALL = {"max_users": 150, "k_core": 5, "mf_dim": 16, "mf_max_epochs": 3, "mf_patience": 2, "fill": "topk"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """Tests never read the user's data/cache folders from the environment."""
    monkeypatch.delenv("DNR_BENCH_DATA", raising=False)
    monkeypatch.setenv("DNR_BENCH_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real dataset file {path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_lists(tmp_path_factory):
    """Real ml-100k lists of 150 users (built once per test session)."""
    from benchmark.data import build_candidate_lists

    lists, _ = build_candidate_lists("ml-100k", cache_dir=tmp_path_factory.mktemp("tiny-cache"), overrides=SMALL,
                                     download=False, progress=False, n_jobs=1)
    return lists


@pytest.fixture(scope="session")
def tiny_spec(tiny_lists):
    from benchmark.batches import data_spec

    return data_spec(tiny_lists)


@pytest.fixture(scope="session")
def tiny_batch(tiny_lists):
    """A training batch of 64 real requests (CPU tensors)."""
    from benchmark.batches import SplitTensors

    return SplitTensors.of(tiny_lists, "train", limit=64).batch(__import__("torch").arange(64))
