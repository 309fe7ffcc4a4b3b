#!/usr/bin/env bash
# Installs the Debian tools the tests run (scripts/_tools.sh) and .venv (if needed), then runs every test.
#   ./scripts/test.sh                 # all tests
#   ./scripts/test.sh tests/infra -x  # arguments go to pytest
# Exits non-zero when any test fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_tools.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${STRATUS_ROOT}"
exec python -m pytest "$@"
