#!/usr/bin/env bash
# A simulated stratus stack on this machine (needs root): training nodes, serving hosts and a load
# balancer stand-in as Linux network namespaces on a bridge, with an S3/KMS/SSM emulator that only
# the bridge reaches.
#
#   sudo ./scripts/sim-stack.sh up /tmp/sim           # prints the stack outputs (also /tmp/sim/outputs.json)
#   sudo ./scripts/launch.sh --sim-dir /tmp/sim -- --set max_steps=20   # train, export, publish
#   sudo ./scripts/sim-stack.sh serve /tmp/sim        # boot 2 serving hosts behind the balancer
#   sudo ./scripts/sim-stack.sh replace /tmp/sim ID   # replace serving host ID (launch, drain, terminate)
#   sudo ./scripts/sim-stack.sh down /tmp/sim         # every process, namespace, link and the bridge: gone
#
# Env: SIM_NODES (training nodes, default 2); SIM_REAL_PREPARE=1 (up: the hosts run the real
# prepare.sh, a venv built offline from the launch's wheelhouse; launch with --wheels DIR, and
# serve/replace with SIM_WHEELS=DIR).
# The emulator's endpoint and test credentials are in /tmp/sim/sim.json ("env"); export them to
# look into its buckets with the AWS CLI or boto3 (stratus remote --sim-dir uses them by itself).
# The simulator is the development package sim/ (python -m sim.stack|sim.serve), never in the runtime bundle.
# Exit status: 0 done, 1 a serving host's boot or replacement failed, 2 bad arguments or not root.
set -euo pipefail
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
[[ ( $# -eq 2 && ( "$1" == up || "$1" == down || "$1" == serve ) ) || ( $# -eq 3 && "$1" == replace ) ]] ||
  { usage >&2; exit 2; }
cd "$(dirname "$0")/.."
if [[ "$1" == serve || "$1" == replace ]]; then
  [[ ${EUID} -eq 0 ]] || { echo "sim-stack.sh: the simulated hosts need root" >&2; exit 2; }
  wheels=()
  [[ -n "${SIM_WHEELS:-}" ]] && wheels=(--wheels "${SIM_WHEELS}")
  [[ "$1" == serve ]] && exec .venv/bin/python -m sim.serve "$2" "${wheels[@]}"
  exec .venv/bin/python -m sim.serve "$2" --replace "$3" "${wheels[@]}"
fi
extra=()
if [[ "$1" == up ]]; then
  # the Debian tools the simulated hosts use (ip, mkfs.btrfs and mkfs.xfs for their instance store)
  # shellcheck source=scripts/_tools.sh
  source scripts/_tools.sh
  [[ "${SIM_REAL_PREPARE:-0}" == 1 ]] && extra=(--real-prepare)
fi
exec .venv/bin/python -m sim.stack "$1" "$2" --nodes "${SIM_NODES:-2}" "${extra[@]}"
