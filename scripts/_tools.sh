# shellcheck shell=bash
# Sourced by scripts/test.sh: installs the Debian tools the tests execute, when missing.
#   package shellcheck: lints every script the stack renders onto its hosts
#   package systemd: systemd-analyze verifies every systemd unit the stack renders
#   package iproute2: ip, network namespaces for simulated nodes
#   package curl: independent HTTP clients in the serving tests
#   packages btrfs-progs, xfsprogs: the simulated nodes' instance store (sim/instance_store.py: the
#     AMI's striped volume; scratch.sh formats a plain image's disk with xfs)
# Needs root (or sudo) and the Debian package mirror on first use; a test never skips for a missing tool.
set -euo pipefail
_stratus_need_pkgs=()
command -v shellcheck >/dev/null 2>&1 || _stratus_need_pkgs+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || _stratus_need_pkgs+=(systemd)
command -v ip >/dev/null 2>&1 || _stratus_need_pkgs+=(iproute2)
command -v curl >/dev/null 2>&1 || _stratus_need_pkgs+=(curl)
command -v mkfs.btrfs >/dev/null 2>&1 || _stratus_need_pkgs+=(btrfs-progs)
command -v mkfs.xfs >/dev/null 2>&1 || _stratus_need_pkgs+=(xfsprogs)
if ((${#_stratus_need_pkgs[@]})); then
  _stratus_sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "[setup] the tests need ${_stratus_need_pkgs[*]}: install them (apt-get install ${_stratus_need_pkgs[*]}) or run as root" >&2
      exit 2
    }
    _stratus_sudo=(sudo)
  fi
  echo "[setup] installing ${_stratus_need_pkgs[*]} (apt-get)" >&2
  "${_stratus_sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${_stratus_sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${_stratus_need_pkgs[@]}" >&2
fi
unset _stratus_need_pkgs _stratus_sudo
