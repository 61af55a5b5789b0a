#!/usr/bin/env bash
# The suite on a fresh machine: install into .venv, then build the candidate lists of every
# dataset it can obtain. Re-running is cheap: the install and the built lists are cached.
#
#   ./run_all.sh [--data-dir DIR] [--datasets "ml-100k ml-1m kuairand amazon-books"]
#                [--cache-dir DIR] [--set data.KEY=VALUE ...] [--setup-only]
#
# Environment: DNR_BENCH_VENV (default ./.venv), PYTHON (interpreter for the venv, default
# python3), TORCH_SPEC (default torch==2.13.0), DNR_BENCH_DATA / DNR_BENCH_CACHE (see README).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${DNR_BENCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
DATASETS="ml-100k ml-1m kuairand amazon-books"
DATA_DIR="${DNR_BENCH_DATA:-}"
if [[ -z "$DATA_DIR" && -d "$ROOT/../shared/datasets" ]]; then
    DATA_DIR="$(cd "$ROOT/../shared/datasets" && pwd)"
fi
SETUP_ONLY=0
EXTRA=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --datasets) DATASETS="$2"; shift 2 ;;
        --cache-dir) EXTRA+=(--cache-dir "$2"); shift 2 ;;
        --set) EXTRA+=(--set "$2"); shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

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

setup
[[ "$SETUP_ONLY" == 1 ]] && exit 0

failed=()
for ds in $DATASETS; do
    echo "== $ds" >&2
    args=(--dataset "$ds" "${EXTRA[@]}")
    [[ -n "$DATA_DIR" ]] && args+=(--data-dir "$DATA_DIR")
    if ! "$VENV/bin/python" -m benchmark.data "${args[@]}" 2> >(tee "$VENV/.last-$ds.err" >&2); then
        failed+=("$ds: $(grep -m1 '^error:' "$VENV/.last-$ds.err" || echo 'failed (see output above)')")
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo >&2
    echo "Not built:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "All datasets built: $DATASETS" >&2
