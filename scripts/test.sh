#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up (Docker, image, package), lint and type-check, run the
# benchmark smoke and pytest, stop what we started. Extra arguments go to pytest.
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
# The venv first on PATH: subprocesses the tests start find the nginxctl under test, not a leftover.
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff and mypy (the project's own configs in pyproject.toml)"
.venv/bin/ruff check nginxctl tests bench
.venv/bin/mypy
# The benchmarks' smoke run: every figure, small, no timing asserted (NGINXCTL_BENCH=0 skips it).
if [ "${NGINXCTL_BENCH:-1}" != 0 ]; then
  .venv/bin/python bench/run.py --quick
fi
# `.venv/bin/pytest` (not `python -m pytest`) keeps the source tree off sys.path: the tests import
# and run the installed package.
.venv/bin/pytest -p no:cacheprovider -ra "$@" tests
