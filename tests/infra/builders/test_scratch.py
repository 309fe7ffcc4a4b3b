"""scratch.sh on a Deep Learning AMI whose `dlami-nvme` service already took the instance-store disks.

The stand-in for dlami-nvme's work (no LVM or real disks in the sandbox): its unit file exists,
`blkid` reports every NVMe disk as an `LVM2_member`, and `mountpoint` answers yes for
`<sysroot>/opt/dlami/nvme` only (the logical volume mounted there). The recording `mdadm` and
`mount` stand-ins show what scratch.sh would do to the machine.
"""

from __future__ import annotations

import pytest

from infra.builders import userdata
from infra.config.catalog import CATALOG
from runtime.contract import PREPARE_UNIT
from tests.infra.builders.test_host_scripts import SCRATCH, _node


def _lvm_disks(box, count: int = 8) -> None:
    by_id = box.root / "dev/disk/by-id"
    by_id.mkdir(parents=True)
    for i in range(1, count + 1):
        (box.root / f"dev/nvme{i}n1").touch()
        (by_id / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{i:04d}").symlink_to(box.root / f"dev/nvme{i}n1")
    box.stand_in("blkid", 'case " $* " in *" -s TYPE "*) echo LVM2_member;; esac')  # pvcreate'd by dlami-nvme
    box.stand_in("mdadm", "exit 1")  # mdadm --assemble finds no array of ours


def _dlami_nvme(box, mounted: bool, unit_dir: str = "usr/lib/systemd/system") -> None:
    unit = box.root / unit_dir / "dlami-nvme.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text("[Unit]\nDescription=dlami-nvme\n")
    nvme = box.root / "opt/dlami/nvme"
    nvme.mkdir(parents=True)
    answer = f'[ "$2" = "{nvme}" ] && exit 0; exit 1' if mounted else "exit 1"
    box.stand_in("mountpoint", answer)


def test_scratch_reuses_dlami_nvmes_volume_with_a_bind_mount_and_never_runs_mdadm(tmp_path):
    box = _node(tmp_path, "p5.48xlarge", "nvme")
    _lvm_disks(box)
    _dlami_nvme(box, mounted=True)
    result = box.run(SCRATCH, stack_env=True)
    assert result.returncode == 0, result.stderr
    assert box.calls("mdadm") == [] and box.calls("mkfs.xfs") == []
    volume = f"{box.root}/opt/dlami/nvme/stratus-scratch"
    assert box.calls("mount") == [f"--bind {volume} {box.root}/scratch"]
    assert (box.root / "opt/dlami/nvme/stratus-scratch").is_dir()
    assert "bind-mounted at" in result.stderr


@pytest.mark.parametrize("unit_dir", ["usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"])
def test_busy_disks_without_the_dlami_mount_fail_the_unit_naming_them(tmp_path, unit_dir):
    # wherever the image installed the unit (the DLAMI: /lib/systemd/system), scratch.sh waits for it
    box = _node(tmp_path, "p5.48xlarge", "nvme")
    _lvm_disks(box)
    _dlami_nvme(box, mounted=False, unit_dir=unit_dir)  # dlami-nvme failed or is still running after the wait
    result = box.run(SCRATCH, stack_env=True)
    assert result.returncode == 1, result.stderr
    assert f"the NVMe disks are in use, not striping them: {box.root}/dev/nvme1n1 (LVM2_member)" in result.stderr
    assert not any(call.startswith("--create") for call in box.calls("mdadm"))
    assert box.calls("mount") == [] and box.calls("mkfs.xfs") == []
    assert len(box.calls("sleep")) == 59  # waited (bounded) for dlami-nvme before giving up


def test_prepare_requires_the_scratch_unit():
    text = userdata.trainer_user_data(
        region="us-east-1",
        buckets={"models": "m", "datasets": "d", "checkpoints": "c", "logs": "l"},
        instance_type=CATALOG["p5.48xlarge"],
        scratch="nvme",
    )
    prepare = text.split(f"/etc/systemd/system/{PREPARE_UNIT}")[1].split("STRATUS_EOF")[1]
    scratch = text.split(f"/etc/systemd/system/{userdata.SCRATCH_UNIT}")[1].split("STRATUS_EOF")[1]
    assert (
        f"Requires={userdata.SCRATCH_UNIT}\n" in prepare
        and f"After=network-online.target {userdata.SCRATCH_UNIT}" in prepare
    )
    assert "After=local-fs.target dlami-nvme.service\n" in scratch and f"Before={PREPARE_UNIT}\n" in scratch
    assert "STRATUS_SCRATCH=nvme" in text.split("/etc/stratus/node.env")[1].split("STRATUS_EOF")[1]
