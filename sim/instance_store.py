"""A simulated training node's instance store, the Deep Learning AMI's `dlami-nvme`, and the
node's real `scratch.sh` run against them at boot.

A p5 or g5 training node boots with local NVMe disks. On the Deep Learning AMI (the stack's
default image) its `dlami-nvme` service has put them into one striped volume mounted at
`/opt/dlami/nvme` before user data runs; the stack's `stratus-scratch.service` (`scratch.sh`)
then bind-mounts `/opt/dlami/nvme/stratus-scratch` at `/scratch`, where training writes. A
simulated node (`sim.nodes.launch_node`) boots the same way, in its root directory `R`:

- `attach`: `DISKS` sparse image files (`R/instance-store/nvme<i>.img`, `DISK_BYTES` each, taking
  only what is written) become loop devices, named as EC2 names instance-store disks
  (`R/dev/disk/by-id/nvme-Amazon_EC2_NVMe_Instance_Storage_AWS<serial>` -> `/dev/loopN`);
- `dlami_nvme`, the stand-in for the AMI's service: its unit file at
  `R/usr/lib/systemd/system/dlami-nvme.service` (what `scratch.sh` looks for), one file system
  striped over every disk and mounted at `R/opt/dlami/nvme`. The AMI uses LVM; this machine has no
  device-mapper, so the stand-in stripes with btrfs (`mkfs.btrfs -d raid0`), which needs no
  kernel module beyond the file system. To `scratch.sh` both are the same: disks that hold
  something (`blkid`: `LVM2_member` there, `btrfs` here) and a mounted volume;
- `scratch`: the stack's own `scratch.sh` (as user data ships it), run with
  `STRATUS_SYSROOT=R`, `STRATUS_SCRATCH=nvme` and the node's disk count, as its unit runs at
  boot. It finds the AMI's volume and bind-mounts it at `R/scratch`, which `sim.transport`
  bind-mounts at `/scratch` for every node command, so training writes to the striped volume.
  `dlami=False` boots a node of a plain image instead: `scratch.sh` formats the (single) disk
  with xfs and mounts it.

The mounts live in this machine's mount namespace under the node's root (a node command's
private namespace sees them through its bind mount). `release` is the instance store's end (a
terminated instance, `sim.stack down`): every mount under the root unmounted, the loop devices
detached, the images deleted. Where loop devices cannot be made (`losetup` fails: a container
without `/dev/loop-control`), `attach` returns no disks and `dlami_nvme` mounts a directory of the
root (a bind mount) in the volume's place: `scratch.sh` still takes the AMI's path; its formatting
path is then not exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runtime.contract import SCRATCH_MOUNT

DISKS = 2
"""Instance-store disks of a simulated node (a g5.48xlarge has 2, a p5 8)."""
DISK_BYTES = 8 << 30
"""Apparent size of each disk image; sparse, so only what is written takes space."""
BY_ID = "dev/disk/by-id"
DISK_LINK = "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{serial}"
DLAMI_UNIT = "usr/lib/systemd/system/dlami-nvme.service"
DLAMI_MOUNT = "opt/dlami/nvme"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def _run(*cmd: str) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0], path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}") is None:
        package = {"mkfs.btrfs": "btrfs-progs", "mkfs.xfs": "xfsprogs"}.get(cmd[0], "util-linux")
        raise RuntimeError(
            f"the simulated instance store needs {cmd[0]}: apt-get install {package} "
            "(scripts/sim-stack.sh up and scripts/test.sh install it)"
        )
    return subprocess.run(cmd, capture_output=True, text=True)


def attach(root: Path, *, disks: int = DISKS, size: int = DISK_BYTES) -> list[str]:
    """The node's instance-store disks as loop devices with their EC2 by-id links; their device
    paths (none where this machine cannot make loop devices)."""
    store, by_id = root / "instance-store", root / BY_ID
    store.mkdir(parents=True, exist_ok=True)
    by_id.mkdir(parents=True, exist_ok=True)
    devices = []
    for i in range(disks):
        image = store / f"nvme{i}.img"
        with open(image, "wb") as f:
            f.truncate(size)
        made = _run("losetup", "--find", "--show", str(image))
        if made.returncode != 0:
            print(
                f"[simulated instance store] no loop device ({made.stderr.strip()}): disks not simulated",
                file=sys.stderr,
            )
            release(root)
            return []
        device = made.stdout.strip()
        devices.append(device)
        serial = hashlib.sha256(f"{root.resolve()}:{i}".encode()).hexdigest()[:17].upper()
        link = by_id / DISK_LINK.format(serial=serial)
        link.unlink(missing_ok=True)  # a root booted before: `up` again in a directory `down` left
        link.symlink_to(device)
    return devices


def dlami_nvme(root: Path, devices: list[str]) -> str:
    """The stand-in for the Deep Learning AMI's `dlami-nvme.service` (see the module docstring):
    its unit file, one volume striped over `devices` mounted at `R/opt/dlami/nvme`. The file
    system type (`btrfs`, or `bind` with no devices)."""
    unit = root / DLAMI_UNIT
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(
        "[Unit]\nDescription=Stand-in for the Deep Learning AMI's dlami-nvme (sim.instance_store)\n"
        "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    )
    mount = root / DLAMI_MOUNT
    mount.mkdir(parents=True, exist_ok=True)
    if not devices:
        volume = root / "instance-store" / "volume"
        volume.mkdir(parents=True, exist_ok=True)
        _check(_run("mount", "--bind", str(volume), str(mount)), "bind-mounting the stand-in volume")
        return "bind"
    data, meta = ("raid0", "raid1") if len(devices) > 1 else ("single", "dup")
    _check(_run("mkfs.btrfs", "-q", "-f", "-d", data, "-m", meta, *devices), "mkfs.btrfs")
    options = ",".join(["noatime", *(f"device={d}" for d in devices)])
    _check(_run("mount", "-o", options, devices[0], str(mount)), f"mounting {devices[0]}")
    return "btrfs"


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"simulated instance store: {what} failed: {done.stderr.strip()}")


def scratch(root: Path, disks: int) -> subprocess.CompletedProcess:
    """Run the stack's `scratch.sh` (as user data ships it) for the node rooted at `root`, as its
    unit runs at boot; its output goes to `R/journal/stratus-scratch.service.log`."""
    from infra.builders.userdata import shipped_script

    script = root / "opt-stratus" / "scratch.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(shipped_script("scratch.sh"))
    env = {
        "PATH": SYSTEM_PATH,
        "STRATUS_SYSROOT": str(root),
        "STRATUS_SCRATCH": "nvme",
        "STRATUS_NVME_DISKS": str(max(1, disks)),
    }
    start = time.monotonic()
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd="/")
    journal = root / "journal" / "stratus-scratch.service.log"
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "a") as log:
        log.write(done.stdout + done.stderr)
        took = time.monotonic() - start
        log.write(f"[simulated systemd] stratus-scratch.service: exit {done.returncode} after {took:.1f} s\n")
    return done


def boot(root: Path, *, dlami: bool = True, disks: int = DISKS) -> dict:
    """A training node's boot up to its scratch: disks, `dlami-nvme` (unless `dlami` is False: one
    disk, a plain image), `scratch.sh`. What was made (`sim.nodes` keeps it in the node's sim.json entry).

    Raises:
        RuntimeError: `scratch.sh` failed (its output in the message); the disks are released.
    """
    devices = attach(root, disks=disks if dlami else 1)
    volume = dlami_nvme(root, devices) if dlami else "none"
    done = scratch(root, len(devices))
    if done.returncode != 0:
        release(root)
        raise RuntimeError(f"stratus-scratch.service failed on the simulated node {root.name}:\n{done.stderr}")
    found = _run("findmnt", "-n", "-o", "SOURCE,FSTYPE", str(root / SCRATCH_MOUNT.lstrip("/"))).stdout.split()
    return {"devices": devices, "dlami_nvme": volume, "scratch": found}


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first."""
    listed = _run("findmnt", "-rn", "-o", "TARGET").stdout.splitlines()
    base = str(root.resolve())
    found = {t.replace("\\x20", " ") for t in listed if t == base or t.startswith(base + os.sep)}
    return sorted(found, key=len, reverse=True)


def loops_under(root: Path) -> list[str]:
    """Loop devices whose backing file is below `root`."""
    listed = _run("losetup", "--list", "--json")
    if listed.returncode != 0 or not listed.stdout.strip():
        return []
    base = str(root.resolve()) + os.sep
    devices = json.loads(listed.stdout).get("loopdevices", [])
    return [d["name"] for d in devices if (d.get("back-file") or "").split(" (deleted)")[0].startswith(base)]


def release(root: Path) -> list[str]:
    """The instance store's end: unmount everything under `root`, detach its loop devices, delete
    the images. Idempotent; what could not be undone (empty when all went)."""
    left = []
    for target in mounts_under(root):
        if _run("umount", target).returncode != 0 and _run("umount", "--lazy", target).returncode != 0:
            left.append(f"mount {target}")
    for device in loops_under(root):
        if _run("losetup", "--detach", device).returncode != 0:
            left.append(f"loop {device}")
    for image in (root / "instance-store").glob("*.img"):
        image.unlink(missing_ok=True)
    return left
