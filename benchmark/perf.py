"""``python -m benchmark.perf``: measured speed and memory of the suite, written to a JSON file.

Section ``data``: for each dataset, a build from the raw files into a fresh cache (retriever
training and cross-fitting included) and a load of the cached lists, each in its own process,
with the stage timings and peak memory the build records. Targets (issue "data foundation"):
ml-100k <= 30 s, the KuaiRand window and the Amazon sample <= 120 s, ML-1M <= 600 s, peak
memory <= 4 GB, loading cached lists <= 2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_SECONDS = {"ml-100k": 30, "ml-1m": 600, "kuairand": 120, "amazon-books": 120}
TARGET_PEAK_MB = 4096
TARGET_LOAD_SECONDS = 2.0


def _run_data_command(dataset: str, data_dir: str | None, cache: Path, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "benchmark.data", "--dataset", dataset, "--cache-dir", str(cache), "--json",
           "--quiet", *extra]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout), wall


def measure_data(dataset: str, data_dir: str | None, settings: list[str]) -> dict[str, Any]:
    extra = [arg for s in settings for arg in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="dnr-perf-") as tmp:
        cache = Path(tmp)
        built, build_wall = _run_data_command(dataset, data_dir, cache, extra)
        loaded, load_wall = _run_data_command(dataset, data_dir, cache, extra)
    assert not built["cached"] and loaded["cached"], "the second run must hit the cache"
    peak = built["peak_rss_mb"]
    peak_total = peak["main"] + peak["retriever_worker"] * peak["n_jobs"]
    return {
        "dataset": dataset,
        "settings": settings,
        "interactions": built["interactions"],
        "users": built["users"],
        "requests": sum(built["requests"].values()),
        "build_seconds": built["build_seconds"],
        "build_wall_seconds": build_wall,
        "stage_seconds": built["timings"],
        "peak_rss_mb": peak,
        "peak_rss_mb_upper_bound": peak_total,
        "load_seconds": loaded["load_seconds"],
        "load_wall_seconds": load_wall,
        "targets": {"build_seconds": TARGET_SECONDS.get(dataset), "peak_rss_mb": TARGET_PEAK_MB,
                    "load_seconds": TARGET_LOAD_SECONDS},
        "within_targets": {
            "build": TARGET_SECONDS.get(dataset) is None or built["build_seconds"] <= TARGET_SECONDS[dataset],
            "memory": peak_total <= TARGET_PEAK_MB,
            "load": loaded["load_seconds"] <= TARGET_LOAD_SECONDS,
        },
    }


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m", "kuairand", "amazon-books"])
    p.add_argument("--data-dir", default=os.environ.get("DNR_BENCH_DATA"))
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="data.KEY=VALUE")
    p.add_argument("--output", default="results/perf.json", help="JSON file to write (sections are merged)")
    args = p.parse_args(argv)

    out_path = Path(args.output)
    report = json.loads(out_path.read_text()) if out_path.exists() else {}
    data = report.get("data", {})
    for ds in args.datasets:
        print(f"data build: {ds} ...", file=sys.stderr, flush=True)
        try:
            data[ds] = measure_data(ds, args.data_dir, args.settings)
        except RuntimeError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        r = data[ds]
        print(f"  build {r['build_seconds']:.1f}s (target {r['targets']['build_seconds']}s), "
              f"peak <= {r['peak_rss_mb_upper_bound']:.0f} MiB, load {r['load_seconds']:.2f}s", file=sys.stderr)
    small, large = data.get("ml-100k"), data.get("ml-1m")
    if small and large:
        data["_growth_ml100k_to_ml1m"] = {
            "interactions_ratio": large["interactions"] / small["interactions"],
            "build_seconds_ratio": large["build_seconds"] / small["build_seconds"],
            "stage_seconds_ratio": {k: large["stage_seconds"][k] / max(small["stage_seconds"][k], 1e-9)
                                    for k in large["stage_seconds"]},
        }
    report["data"] = data
    report["machine"] = machine()
    report["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out_path)
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
