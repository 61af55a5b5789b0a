#!/usr/bin/env bash
# The test command: installs the suite into .venv when needed (see run_all.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k metrics`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/run_all.sh" --setup-only
cd "$ROOT"
exec "${DNR_BENCH_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
