#!/bin/bash
# stratus-scratch.service (training nodes, every boot): mount the scratch space at /scratch.
# STRATUS_SCRATCH=nvme: the instance's local NVMe disks, striped into one RAID0 array when there
# are several (reassembled after a reboot; instance store is wiped on stop/start, so the array is
# created again then); an existing file system is mounted, never formatted again;
# STRATUS_SCRATCH=ebs: the gp3 volume attached as /dev/sdf; none: nothing.
# On a Deep Learning AMI the `dlami-nvme` service has already put the instance-store disks into
# LVM and mounted them at /opt/dlami/nvme before user data runs: then /scratch is a bind mount of
# /opt/dlami/nvme/stratus-scratch (the AMI's volume is used, not taken over: its disks are busy, and
# tools of the AMI expect that mount). A bind mount, not a symlink, so /scratch is a mount point and
# the node command's check that the run directory is on it (`findmnt -T`) holds either way. Disks
# that are in use (an LVM or other RAID member, a file system) with no dlami-nvme mount are never
# given to mdadm: the unit fails, naming them.
# Env (/etc/stratus/stack.env): STRATUS_SCRATCH, STRATUS_NVME_DISKS (how many to wait for).
# STRATUS_SYSROOT: look for devices and mount under this directory instead of / (tests).
set -euo pipefail
R="${STRATUS_SYSROOT:-}"
MOUNT="${R}/scratch"
ARRAY="${R}/dev/md/stratus-scratch"
DLAMI_NVME="${R}/opt/dlami/nvme"
# Where systemd finds the unit: the DLAMI's own (/lib, merged into /usr/lib), or one an image added.
DLAMI_UNITS=("${R}/etc/systemd/system" "${R}/usr/lib/systemd/system" "${R}/lib/systemd/system")

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

dlami_nvme_mounted() { mountpoint -q "${DLAMI_NVME}"; }

dlami_nvme_installed() {
  local dir
  for dir in "${DLAMI_UNITS[@]}"; do
    [ -e "${dir}/dlami-nvme.service" ] && return 0
  done
  return 1
}

use_dlami_nvme() {
  # The AMI's instance-store volume (LVM over every disk): bind-mount a directory of it at /scratch.
  mkdir -p "${DLAMI_NVME}/stratus-scratch" "${MOUNT}"
  mount --bind "${DLAMI_NVME}/stratus-scratch" "${MOUNT}"
  mkdir -p "${MOUNT}/runs"
  log "${DLAMI_NVME} (set up by dlami-nvme) bind-mounted at ${MOUNT}"
}

busy_disks() {
  # Disks that already hold something: an LVM physical volume, a RAID member of another array, a
  # file system (blkid TYPE). Blank disks print nothing. `-p`: probe the disk itself, not blkid's
  # cache, which may still describe an earlier disk under the same name.
  local disk type
  for disk in "$@"; do
    type="$(blkid -p -o value -s TYPE "${disk}" 2>/dev/null || true)"
    [ -n "${type}" ] && [ "${type}" != linux_raid_member ] && echo "${disk} (${type})"
  done
  return 0
}

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
    local busy
    busy="$(busy_disks "${disks[@]}")"
    if [ -n "${busy}" ]; then
      log "FATAL: the NVMe disks are in use, not striping them: $(echo "${busy}" | tr '\n' ' ')"
      log "(a Deep Learning AMI's dlami-nvme puts them into LVM at /opt/dlami/nvme, which is not mounted)"
      exit 1
    fi
    log "striping ${#disks[@]} NVMe disks (RAID0): ${disks[*]}"
    mdadm --create "${ARRAY}" --level=0 --raid-devices="${#disks[@]}" --run --force "${disks[@]}" >&2
  fi
  echo "${ARRAY}"
}

if [ "${STRATUS_SCRATCH:-none}" = nvme ] && mountpoint -q "${MOUNT}"; then
  log "${MOUNT} is already mounted"
  exit 0
fi
if [ "${STRATUS_SCRATCH:-none}" = nvme ] && dlami_nvme_installed; then
  # dlami-nvme normally finishes before user data; wait for it on a slow boot.
  wait_for dlami_nvme_mounted || log "dlami-nvme is installed but ${DLAMI_NVME} is not mounted"
fi
case "${STRATUS_SCRATCH:-none}" in
  none) exit 0 ;;
  nvme)
    if dlami_nvme_mounted; then
      use_dlami_nvme
      exit 0
    fi
    device="$(nvme_device)"
    ;;
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
if ! blkid -p "${device}" >/dev/null 2>&1; then
  log "formatting ${device} (xfs)"
  mkfs.xfs -q -f "${device}"
fi
mkdir -p "${MOUNT}"
mount -o noatime "${device}" "${MOUNT}"
mkdir -p "${MOUNT}/runs"
log "${device} mounted at ${MOUNT}"
