#!/usr/bin/env bash
# Offline plan of a stack before `pulumi up`: the resources it would create (type, name, key
# security settings), the verdict of every policy-pack rule, and the hourly cost breakdown.
# Needs no AWS credentials and no Pulumi CLI: the program runs under Pulumi's unit-test mocks.
#   ./scripts/plan.sh                        # Pulumi.example.yaml
#   ./scripts/plan.sh Pulumi.dev.yaml        # any stack config file
#   ./scripts/plan.sh --update-ami Pulumi.dev.yaml
#       pin the newest AMIs into the stack file (needs AWS credentials; the only command that
#       changes them besides editing the file)
# Exit status (runtime.contract.ExitCode): 0 all rules pass, 1 a rule is violated, 2 invalid config
# or over max-hourly-usd.
set -euo pipefail
tool=infra.tools.plan
if [[ "${1:-}" == "--update-ami" ]]; then
  tool=infra.tools.ami
  shift
  [[ $# -eq 1 ]] || { echo "usage: $0 --update-ami Pulumi.<stack>.yaml" >&2; exit 2; }
fi
config="${1:-Pulumi.example.yaml}"
# Resolve the file before changing directory, so relative paths mean what the caller meant.
if [[ -f "${config}" ]]; then
  config="$(cd "$(dirname "${config}")" && pwd)/$(basename "${config}")"
fi
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "${STRATUS_ROOT}"
exec python -m "${tool}" "${config}"
