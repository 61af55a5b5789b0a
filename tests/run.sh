#!/usr/bin/env bash
# The test command: installs the suite into .venv when needed (see run_all.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k metrics`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/run_all.sh" --setup-only
# pdflatex for tests/test_latex.py (the report's LaTeX must compile): Debian's TeX packages when
# they are missing and this user can install them; otherwise that test says what to install.
if ! command -v pdflatex >/dev/null && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing pdflatex (texlive-latex-base, texlive-latex-recommended) for the LaTeX test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        texlive-latex-base texlive-latex-recommended; } >/dev/null 2>&1 \
        || echo "could not install pdflatex; tests/test_latex.py will fail and say why" >&2
fi
cd "$ROOT"
exec "${DNR_BENCH_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
