#!/usr/bin/env bash
# The whole suite on a fresh machine: install into .venv, build the candidate lists of every
# dataset it can obtain, run every selected method on them with every seed, then build the report.
# Re-running resumes: the install, the built lists and every finished run are reused.
#
#   ./run_all.sh [--datasets "ml-100k ml-1m kuairand amazon-books"] [--methods all]
#                [--seeds "0 1 2" (smoke: "0")] [--profile paper|smoke] [--results-dir DIR]
#                [--devices cpu|cuda:0,cuda:1] [--backend sequential|loky|dask] [--n-jobs N]
#                [--scheduler ADDRESS] [--threads N] [--data-dir DIR] [--cache-dir DIR] [--no-download]
#                [--set KEY=VALUE ...] [--no-report] [--setup-only]
#
# Lists are comma- or space-separated. --methods takes slugs and groups (python -m benchmark --list);
# --set is repeatable and takes data.KEY, train.KEY, model.KEY or <method>.KEY. --results-dir
# defaults to results/ beside this script for the paper profile and results-<profile>/ otherwise
# (runs of another profile would replace the paper records: the record path has no profile in it).
# Exit code: 0 everything asked for ran, 1 a dataset was not built (not obtained, or its lists
# failed), a run failed or the report failed (all listed at the end), 2 bad options.
# Environment: DNR_BENCH_PYTHON (use this interpreter as it is: no install), DNR_BENCH_VENV
# (default ./.venv), PYTHON (interpreter for the venv, default python3), TORCH_SPEC (default
# torch==2.13.0), DNR_BENCH_DATA / DNR_BENCH_CACHE (see README).
set -euo pipefail
# Bash reads a script while it runs it: the braces around the rest make it read all of it first,
# so editing or updating the checkout during a long run cannot change what this run does.
{

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${DNR_BENCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
DATASETS="ml-100k ml-1m kuairand amazon-books"
METHODS="all"
SEEDS=""      # default: the paper's three seeds, one for the smoke profile
PROFILE="paper"
RESULTS_DIR=""
DATA_DIR="${DNR_BENCH_DATA:-}"
if [[ -z "$DATA_DIR" && -d "$ROOT/../shared/datasets" ]]; then
    DATA_DIR="$(cd "$ROOT/../shared/datasets" && pwd)"
fi
SETUP_ONLY=0
REPORT=1
COMMON=()     # options for both the data and the run command
RUN_OPTS=()   # options for python -m benchmark only
SETS=()       # every --set KEY=VALUE
THREADS=""    # torch threads per lane; the smoke profile's tiny models default to 1 (faster than 2 here)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
bad() { echo "run_all.sh: $*" >&2; exit 2; }
# Options that take a value: the value must be there and must not be the next option.
value() { [[ $# -ge 2 && "$2" != --* ]] || bad "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --data-dir) value "$@"; DATA_DIR="$2"; shift 2 ;;
        --datasets) value "$@"; DATASETS="$2"; shift 2 ;;
        --cache-dir) value "$@"; COMMON+=(--cache-dir "$2"); shift 2 ;;
        --methods) value "$@"; METHODS="$2"; shift 2 ;;
        --seeds) value "$@"; SEEDS="$2"; shift 2 ;;
        --profile) value "$@"; PROFILE="$2"; shift 2 ;;
        --results-dir) value "$@"; RESULTS_DIR="$2"; shift 2 ;;
        --threads) value "$@"; THREADS="$2"; shift 2 ;;
        --devices|--backend|--n-jobs|--scheduler) value "$@"; RUN_OPTS+=("$1" "$2"); shift 2 ;;
        --set) value "$@"; SETS+=("$2"); shift 2 ;;
        --no-download) COMMON+=(--no-download); shift ;;
        --no-report) REPORT=0; shift ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) bad "unknown option $1 (see --help)" ;;
    esac
done

DATASETS="${DATASETS//,/ }"
[[ -n "$SEEDS" ]] || { [[ "$PROFILE" == smoke ]] && SEEDS="0" || SEEDS="0 1 2"; }
SEEDS="${SEEDS//,/ }"
METHODS="$(echo "$METHODS" | tr -s ' ,' ',' | sed 's/^,//; s/,$//')"
[[ -n "${DATASETS// /}" ]] || bad "--datasets is empty"
[[ -n "$METHODS" ]] || bad "--methods is empty"
[[ -n "${SEEDS// /}" ]] || bad "--seeds is empty"
for seed in $SEEDS; do
    [[ "$seed" =~ ^[0-9]+$ ]] || bad "--seeds: $seed is not a non-negative integer"
done
[[ -n "$RESULTS_DIR" ]] || { [[ "$PROFILE" == paper ]] && RESULTS_DIR="$ROOT/results" || RESULTS_DIR="$ROOT/results-$PROFILE"; }
[[ -n "$DATA_DIR" ]] && COMMON+=(--data-dir "$DATA_DIR")
[[ -z "$THREADS" && "$PROFILE" == smoke ]] && THREADS=1
[[ -n "$THREADS" ]] && RUN_OPTS+=(--threads "$THREADS")

export PYTHONHASHSEED=0
export CUBLAS_WORKSPACE_CONFIG=:4096:8

setup() {
    local stamp="$VENV/.dnr-bench-installed" want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "Installing the suite into $VENV ..." >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    # torch first and pinned: with it present, the project's torch>=2.2 installs nothing more.
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT" >&2
    echo "$want" > "$stamp"
}

phase_start=$SECONDS
TIMES=()
lap() { TIMES+=("$1 $((SECONDS - phase_start))s"); phase_start=$SECONDS; }

if [[ "$SETUP_ONLY" == 1 ]]; then
    setup
    exit 0
fi
if [[ -n "${DNR_BENCH_PYTHON:-}" ]]; then
    PY="$(command -v "$DNR_BENCH_PYTHON")" || bad "DNR_BENCH_PYTHON=$DNR_BENCH_PYTHON is not an executable interpreter"
else
    setup
    PY="$VENV/bin/python"
fi
# The checkout itself, also for an interpreter that has the suite not installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
lap setup

# Check every option before hours of work: the dataset names (-> canonical), the methods, the
# profile and the settings, as python -m benchmark will resolve them. Prints the canonical names.
canonical="$("$PY" - "$PROFILE" "$METHODS" "$DATASETS" ${SETS[@]+"${SETS[@]}"} <<'EOF'
import sys

from benchmark import registry
from benchmark.config import check_settings, parse_set_options, resolve_run_config
from benchmark.data.sources import get_source
from benchmark.errors import BenchmarkError

profile, methods, datasets, *items = sys.argv[1:]
try:
    names = list(dict.fromkeys(get_source(d).name for d in datasets.split()))
    slugs = registry.resolve(methods.split(","))
    settings = parse_set_options(items)
    check_settings(settings, slugs)
    for dataset in names:
        for slug in slugs:
            resolve_run_config(dataset, slug, profile, settings)
except BenchmarkError as exc:
    print(f"run_all.sh: {exc}", file=sys.stderr)
    sys.exit(2)
print(" ".join(names))
EOF
)" || { rc=$?; [[ $rc == 2 ]] || echo "run_all.sh: $PY cannot load the suite (see above)" >&2; exit $rc; }
read -r -a CANON <<< "$canonical"

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/run_all.XXXXXX")"
trap 'rm -rf "$LOGS"' EXIT

# Phase 1: the lists, one dataset at a time, with the profile's data settings (the very lists the
# runs load from the cache). A dataset that fails is noted with its reason and left out.
DATA_SETS=()
for item in ${SETS[@]+"${SETS[@]}"}; do
    [[ "$item" == data.* ]] && DATA_SETS+=(--set "$item")
done
BUILT=()
MISSING=()
for ds in "${CANON[@]}"; do
    echo "== data: $ds ($PROFILE profile)" >&2
    set +e
    "$PY" -m benchmark.data --dataset "$ds" --profile "$PROFILE" ${COMMON[@]+"${COMMON[@]}"} \
        ${DATA_SETS[@]+"${DATA_SETS[@]}"} 2>&1 | tee "$LOGS/data-$ds.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc == 0 ]]; then
        BUILT+=("$ds")
    else
        reason="$(grep -m1 '^error:' "$LOGS/data-$ds.log" || true)"
        [[ -n "$reason" ]] || reason="exit $rc: $(grep -v '^[[:space:]]*$' "$LOGS/data-$ds.log" | tail -n1)"
        MISSING+=("$ds: ${reason#error: }")
    fi
done
lap data

# Phase 2: one call for every built dataset, so the lanes are shared across datasets.
JOINED="$(IFS=,; echo "${BUILT[*]-}")"
RUNS_LINE=""
RUN_FAILS=()
RUNS_STOPPED=""
runs_rc=0
if [[ ${#BUILT[@]} -gt 0 ]]; then
    run_sets=()
    for item in ${SETS[@]+"${SETS[@]}"}; do run_sets+=(--set "$item"); done
    echo "== runs: $METHODS on $JOINED, seeds $SEEDS ($PROFILE profile) -> $RESULTS_DIR" >&2
    set +e
    # shellcheck disable=SC2086  # SEEDS is a checked list of integers
    "$PY" -m benchmark --dataset "$JOINED" --methods "$METHODS" --seeds $SEEDS --profile "$PROFILE" \
        --results-dir "$RESULTS_DIR" ${RUN_OPTS[@]+"${RUN_OPTS[@]}"} ${COMMON[@]+"${COMMON[@]}"} \
        ${run_sets[@]+"${run_sets[@]}"} 2>&1 | tee "$LOGS/runs.log"
    runs_rc=${PIPESTATUS[0]}
    set -e
    # "N runs asked for: D already finished, T to run (...)" and "finished in Xs: A ok, B failed"
    RUNS_LINE="$(grep -m1 ' runs asked for: ' "$LOGS/runs.log" | sed 's/ (.*//' || true)"
    done_line="$(grep -m1 '^finished in ' "$LOGS/runs.log" | sed 's/^finished in [0-9]*s: //' || true)"
    [[ -n "$done_line" ]] && RUNS_LINE="$RUNS_LINE; $done_line"
    mapfile -t RUN_FAILS < <(grep '^  failed ' "$LOGS/runs.log" | sed 's/^  failed //' || true)
    if [[ $runs_rc != 0 && ( -z "$done_line" || ${#RUN_FAILS[@]} == 0 ) ]]; then
        RUNS_STOPPED="python -m benchmark stopped with exit $runs_rc before the end (its last line: $(
            grep -v '^[[:space:]]*$' "$LOGS/runs.log" | tail -n1)); re-running resumes"
    fi
fi
lap runs

# Phase 3: the report over the built datasets; only its own failure fails the suite.
REPORT_STATE="skipped (--no-report)"
if [[ "$REPORT" == 1 && ${#BUILT[@]} == 0 ]]; then
    REPORT_STATE="skipped (no dataset built)"
elif [[ "$REPORT" == 1 ]]; then
    echo "== report: $RESULTS_DIR ($JOINED)" >&2
    if "$PY" -m benchmark.report --results-dir "$RESULTS_DIR" --datasets "$JOINED"; then
        REPORT_STATE="ok"
    else
        REPORT_STATE="FAILED (exit $?; see its output above)"
    fi
fi
lap report

echo
echo "== Summary: profile $PROFILE, methods $METHODS, seeds $SEEDS -> $RESULTS_DIR"
echo "time: ${TIMES[*]/%/,}" | sed 's/,$//'
echo "datasets built: ${BUILT[*]:-none}"
if [[ ${#MISSING[@]} -gt 0 ]]; then
    echo "datasets not built (not obtained, or their lists failed):"
    printf '  %s\n' "${MISSING[@]}"
fi
[[ -n "$RUNS_LINE" ]] && echo "runs: ${RUNS_LINE}"
if [[ ${#RUN_FAILS[@]} -gt 0 ]]; then
    echo "runs failed (${#RUN_FAILS[@]}; their records hold the error, re-running retries them):"
    printf '  %s\n' "${RUN_FAILS[@]}"
fi
[[ -n "$RUNS_STOPPED" ]] && echo "runs: $RUNS_STOPPED"
echo "report: $REPORT_STATE"
if [[ ${#MISSING[@]} -gt 0 || ${#RUN_FAILS[@]} -gt 0 || $runs_rc != 0 || "$REPORT_STATE" == FAILED* ]]; then
    echo "NOT everything asked for ran (see above)."
    if [[ ${#BUILT[@]} -gt 0 ]]; then
        echo "what is finished, resumable or left: $PY -m benchmark --plan --dataset $JOINED" \
             "--methods $METHODS --seeds $SEEDS --profile $PROFILE --results-dir $RESULTS_DIR${SETS[*]:+ --set ${SETS[*]}}"
    fi
    [[ $runs_rc == 2 ]] && exit 2
    exit 1
fi
echo "Everything asked for ran."
exit 0
}
