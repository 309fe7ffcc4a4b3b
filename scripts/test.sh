#!/usr/bin/env bash
# Installs the Debian tools the tests run (scripts/_tools.sh) and .venv (if needed), then runs every test.
#   ./scripts/test.sh                 # all tests
#   ./scripts/test.sh tests/infra -x  # arguments go to pytest
# Exits non-zero when any test fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_tools.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${STRATUS_ROOT}"
# The stock gRPC test client needs protobuf 6, which cannot share .venv with pulumi-policy's 5.29:
# it goes to its own directory (tests/runtime/serve/test_grpc.py puts it first on PYTHONPATH).
client=".venv/stratus-grpc-client"
if ! cmp -s requirements/grpc-client.txt "${client}/.requirements" 2>/dev/null; then
  echo "[setup] installing requirements/grpc-client.txt into ${client}" >&2
  python -m pip install --quiet --no-deps --upgrade --target "${client}" -r requirements/grpc-client.txt
  cp requirements/grpc-client.txt "${client}/.requirements"
fi
exec python -m pytest "$@"
