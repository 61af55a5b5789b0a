"""Results store: paths, atomic records, finished/failed/stale logic."""
from __future__ import annotations

import os

import numpy as np
import pytest

from benchmark import store
from benchmark.store import RunSpec

SPEC = RunSpec("ml-100k", "prm", 0)


def test_round_trip_and_paths(tmp_path):
    vectors = {"request_id": np.arange(3), "N@6": np.array([0.1, 0.5, 1.0])}
    path = store.write_record(tmp_path, SPEC, {"status": "ok", "config_hash": "h", "metrics": {"x": np.float32(1.5)}},
                              vectors)
    assert path == tmp_path / "runs" / "ml-100k" / "prm" / "seed0.json"
    record = store.read_record(tmp_path, SPEC)
    assert record["status"] == "ok" and record["metrics"]["x"] == 1.5 and record["schema_version"] == 1
    np.testing.assert_array_equal(store.read_per_request(tmp_path, SPEC)["N@6"], vectors["N@6"])
    assert [r["method"] for r in store.all_records(tmp_path)] == ["prm"]


def test_finished_only_when_ok_with_the_same_hash(tmp_path):
    assert not store.is_finished(tmp_path, SPEC, "h")
    store.write_record(tmp_path, SPEC, {"status": "failed", "config_hash": "h", "error": "boom"})
    assert not store.is_finished(tmp_path, SPEC, "h")  # failed runs are retried
    store.write_record(tmp_path, SPEC, {"status": "ok", "config_hash": "h"})
    assert store.is_finished(tmp_path, SPEC, "h")
    assert not store.is_finished(tmp_path, SPEC, "other")  # the config changed: stale


def test_interrupted_write_keeps_previous_record(tmp_path, monkeypatch):
    store.write_record(tmp_path, SPEC, {"status": "ok", "config_hash": "old"})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_record(tmp_path, SPEC, {"status": "ok", "config_hash": "new"}, {"x": np.zeros(2)})
    monkeypatch.undo()
    assert store.read_record(tmp_path, SPEC)["config_hash"] == "old"
    folder = store.path_for(tmp_path, SPEC).parent
    assert sorted(p.name for p in folder.iterdir()) == ["seed0.json"]  # no temporary files left


def test_bad_status_and_nan_rejected(tmp_path):
    with pytest.raises(ValueError):
        store.write_record(tmp_path, SPEC, {"status": "maybe"})
    store.write_record(tmp_path, SPEC, {"status": "ok", "value": float("nan")})
    assert store.read_record(tmp_path, SPEC)["value"] is None  # NaN stored as null, JSON stays valid
