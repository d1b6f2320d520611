#!/usr/bin/env bash
# Fresh machine to test results: set up .venv with the test requirements, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements-test.txt
.venv/bin/python -m pytest -q tests "$@"
