"""The perf epochs section on a tiny real subset: phases found from the contract, ratios to PRM,
inference cost per request (values are measured, so only their shape and sanity are checked)."""
from __future__ import annotations

from benchmark.perf import _phases, measure_epochs
from helpers import build

SMALL = ["data.max_users=150", "data.k_core=5", "data.mf_dim=16", "data.mf_max_epochs=3", "data.mf_patience=2",
         "train.max_train_requests=256", "train.batch_size=128", "model.switch_epoch=3"]


def test_phases_come_from_stages_and_step_activity(tiny_spec):
    assert _phases(build("prm", tiny_spec)) == [("", 0, 1)]
    dnr = build("dnr-b", tiny_spec, switch_epoch=40)
    assert _phases(dnr) == [("", 0, 1), ("@epoch>=41", 0, 41)]  # the generator step starts after T
    assert _phases(build("dnr-b-heuristic", tiny_spec)) == [("", 0, 1)]


def test_epochs_section_times_every_phase_and_inference():
    r = measure_epochs("ml-100k", ["dnr-b", "pier"], epochs=1, data_dir=None, settings=SMALL, inference_requests=64)
    methods = r["methods"]
    assert set(methods) == {"prm", "dnr-b", "dnr-b@epoch>=4", "pier"}
    assert methods["prm"]["ratio_to_prm"] == 1.0
    assert all(v["seconds_per_epoch"] > 0 for v in methods.values())
    # one inference figure per method, on its last phase
    assert {u for u, v in methods.items() if "inference_ms_per_request" in v} == {"prm", "dnr-b@epoch>=4", "pier"}
    assert r["inference_requests"] == 64 and r["train_requests"] == 256
