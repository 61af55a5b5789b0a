"""Results store: one record per (dataset, method, seed) (architecture.md §4).

``runs/<dataset>/<method>/seed<k>.json`` holds the resolved config and its hash, metrics,
timings and provenance; ``seed<k>.npz`` beside it holds the per-request test metric vectors
(paired tests need them). The sidecar is written first and the JSON last, each atomically
(temporary file + ``os.replace``), so the JSON is the commit marker: a killed process leaves
either the previous record or the new one, never a torn file. ``seed<k>.ckpt`` holds the
mid-run checkpoint (model, optimisers, RNG states) that lets an interrupted run resume; it is
removed when the run finishes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    dataset: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.method}/seed{self.seed}"


def path_for(results_dir: Path, spec: RunSpec, suffix: str = ".json") -> Path:
    """The only place a run's file path is built (writer, planner and report use it)."""
    return Path(results_dir) / "runs" / spec.dataset / spec.method / f"seed{spec.seed}{suffix}"


def checkpoint_path(results_dir: Path, spec: RunSpec) -> Path:
    return path_for(results_dir, spec, ".ckpt")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; records are ordinary files
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj: Any) -> Any:
    """Plain JSON values: NumPy scalars/arrays to Python, NaN/inf to null (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_record(results_dir: Path, spec: RunSpec, record: dict[str, Any],
                 per_request: dict[str, np.ndarray] | None = None) -> Path:
    record = {"schema_version": SCHEMA_VERSION, "dataset": spec.dataset, "method": spec.method,
              "seed": spec.seed, **record}
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}")
    if per_request is not None:
        _atomic_write(path_for(results_dir, spec, ".npz"), lambda fh: np.savez_compressed(fh, **per_request))
    text = json.dumps(_clean(record), indent=1, allow_nan=False)
    path = path_for(results_dir, spec)
    _atomic_write(path, lambda fh: fh.write(text.encode()))
    return path


def read_record(results_dir: Path, spec: RunSpec) -> dict[str, Any] | None:
    path = path_for(results_dir, spec)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:  # never produced by write_record; a hand-edited or foreign file
        raise ValueError(f"{path}: not a valid run record ({exc})") from exc


def read_per_request(results_dir: Path, spec: RunSpec) -> dict[str, np.ndarray]:
    with np.load(path_for(results_dir, spec, ".npz")) as npz:
        return {k: npz[k] for k in npz.files}


def is_finished(results_dir: Path, spec: RunSpec, config_hash: str) -> bool:
    """A run is done when its record says ok for the same resolved config."""
    record = read_record(results_dir, spec)
    return bool(record) and record.get("status") == "ok" and record.get("config_hash") == config_hash


def all_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every record under ``results_dir/runs`` (for reports)."""
    root = Path(results_dir) / "runs"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*/seed*.json"))]
