#!/usr/bin/env bash
# One entry point for a fresh machine: installs what is missing, then runs the pipeline or tests.
#
#   bash run.sh pipeline   # uv + locked deps + Fashion-MNIST (Debian package), then `dvc repro`
#   bash run.sh tests      # the same installs, then the test suite
#
# Extra arguments go to the command: `bash run.sh tests -k losses`, `bash run.sh pipeline teacher`.
set -euo pipefail
cd "$(dirname "$0")"

# Keep the tools from calling home (there may be no network beyond the package registries).
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true

need_uv() {
  if ! command -v uv >/dev/null 2>&1; then
    echo "run.sh: installing uv with pip" >&2
    python3 -m pip install --quiet uv || python3 -m pip install --quiet --user uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
  # Compiled bytecode once, at install: Python then never compiles torch's or MLflow's sources at
  # import, which halves every stage's start-up where PYTHONDONTWRITEBYTECODE is set (as on the
  # reference machine) and saves the first run's compile everywhere else.
  uv sync --frozen --python 3.11 --compile-bytecode
}

need_plots_js() {
  # vega, vega-lite and vega-embed (pinned in package-lock.json), inlined by tools/plots_template.py
  # into the page template .dvc/config names, so `dvc plots show` renders offline.
  if ! command -v npm >/dev/null 2>&1; then
    echo "run.sh: npm not found; skipping the offline page template for dvc plots show" >&2
    return 0
  fi
  # npm ci wipes node_modules: rerun it only when the lock file is newer than the install.
  if [ ! node_modules/.package-lock.json -nt package-lock.json ] &&
     ! npm ci --no-audit --no-fund --silent; then
    echo "run.sh: npm ci failed; dvc plots show will have no offline page template" >&2
    return 0
  fi
  uv run python -m tools.plots_template >/dev/null
}

need_fashion_mnist() {
  # The Debian/Ubuntu package puts the four IDX files in /usr/share/datasets/fashion-mnist.
  [ -d /usr/share/datasets/fashion-mnist ] && return 0
  command -v apt-get >/dev/null 2>&1 || return 0  # elsewhere the download stage says what to do
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "run.sh: installing the Debian package dataset-fashion-mnist" >&2
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
}

case "${1:-}" in
  pipeline) shift; need_uv; need_plots_js; need_fashion_mnist; uv run dvc repro "$@" ;;
  # One test process per core and one more (pytest-xdist): with one per core, a third of the
  # cores' time went idle while tests waited on servers, locks and DVC's queue. A file's
  # tests stay together and in order in one process (the end-to-end tests share a repository and
  # build on each other), the files in collection order (tests/conftest.py: the longest first),
  # not pytest-xdist's default of the files with the most tests first.
  tests)    shift; need_uv; need_plots_js; need_fashion_mnist
            uv run pytest -n "$(( $(nproc) + 1 ))" --dist loadfile --no-loadscope-reorder "$@" ;;
  *) echo "usage: bash run.sh pipeline|tests [args...]" >&2; exit 2 ;;
esac
