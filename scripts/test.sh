#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up (Docker, image, package), run pytest, stop what we started.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f .dockerd.pid
bash scripts/setup.sh
stop() {
  if [ -f .dockerd.pid ]; then
    kill "$(cat .dockerd.pid)" 2>/dev/null || true
    rm -f .dockerd.pid
  fi
}
trap stop EXIT
# First the benchmarks' smoke run: every figure, small, no timing asserted (NGINXCTL_BENCH=0 skips it).
if [ "${NGINXCTL_BENCH:-1}" != 0 ]; then
  .venv/bin/python bench/run.py --quick
fi
# `.venv/bin/pytest` (not `python -m pytest`) keeps the source tree off sys.path: the tests import
# and run the installed package.
.venv/bin/pytest -p no:cacheprovider -ra "$@" tests
