#!/usr/bin/env bash
# Sets up .venv (if needed) and runs every test.
#   ./scripts/test.sh                 # all tests
#   ./scripts/test.sh tests/infra -x  # arguments go to pytest
# Exits non-zero when any test fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${STRATUS_ROOT}"
exec python -m pytest "$@"
