#!/bin/bash
# stratus-scratch.service (training nodes, every boot): mount the scratch space at /scratch.
# STRATUS_SCRATCH=nvme: the instance's local NVMe disks, striped into one RAID0 array when there
# are several (reassembled after a reboot; instance store is wiped on stop/start, so the array is
# created again then); an existing file system is mounted, never formatted again;
# STRATUS_SCRATCH=ebs: the gp3 volume attached as /dev/sdf; none: nothing.
# Env (/etc/stratus/stack.env): STRATUS_SCRATCH, STRATUS_NVME_DISKS (how many to wait for).
# STRATUS_SYSROOT: look for devices and mount under this directory instead of / (tests).
set -euo pipefail
R="${STRATUS_SYSROOT:-}"
MOUNT="${R}/scratch"
ARRAY="${R}/dev/md/stratus-scratch"

log() { echo "[stratus-scratch] $*" >&2; }

nvme_disks() {
  local link
  for link in "${R}"/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_*; do
    [ -e "${link}" ] && readlink -f "${link}"
  done | sort -u
}

wait_for() {
  local i
  for i in $(seq 60); do
    "$@" && return 0
    [ "${i}" -lt 60 ] && sleep 2
  done
  return 1
}

enough_nvme() { [ "$(nvme_disks | wc -l)" -ge "${STRATUS_NVME_DISKS:-1}" ]; }

nvme_device() {
  local disks=()
  wait_for enough_nvme || log "found $(nvme_disks | wc -l) of ${STRATUS_NVME_DISKS:-1} NVMe instance-store disks"
  mapfile -t disks < <(nvme_disks)
  if [ "${#disks[@]}" -eq 0 ]; then
    log "FATAL: no NVMe instance-store disk on this instance"
    exit 1
  fi
  if [ "${#disks[@]}" -eq 1 ]; then
    echo "${disks[0]}"
    return
  fi
  # After a reboot the disks keep their array (instance store survives reboots, not stop/start):
  # assemble it again, so the checkpoints on it survive; create it only on blank disks.
  if [ ! -e "${ARRAY}" ] && ! mdadm --assemble "${ARRAY}" "${disks[@]}" >&2 2>/dev/null; then
    log "striping ${#disks[@]} NVMe disks (RAID0): ${disks[*]}"
    mdadm --create "${ARRAY}" --level=0 --raid-devices="${#disks[@]}" --run --force "${disks[@]}" >&2
  fi
  echo "${ARRAY}"
}

case "${STRATUS_SCRATCH:-none}" in
  none) exit 0 ;;
  nvme) device="$(nvme_device)" ;;
  ebs)
    device="${R}/dev/sdf"
    wait_for test -e "${device}" || {
      log "FATAL: the scratch volume ${device} did not appear"
      exit 1
    }
    ;;
  *)
    log "FATAL: unknown STRATUS_SCRATCH=${STRATUS_SCRATCH}"
    exit 1
    ;;
esac
if mountpoint -q "${MOUNT}"; then
  log "${MOUNT} is already mounted"
  exit 0
fi
if ! blkid "${device}" >/dev/null 2>&1; then
  log "formatting ${device} (xfs)"
  mkfs.xfs -q -f "${device}"
fi
mkdir -p "${MOUNT}"
mount -o noatime "${device}" "${MOUNT}"
mkdir -p "${MOUNT}/runs"
log "${device} mounted at ${MOUNT}"
