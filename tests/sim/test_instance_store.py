"""A simulated training node's boot up to its scratch (`sim.instance_store`): loop-device disks,
the Deep Learning AMI's `dlami-nvme` stand-in, and the stack's real `scratch.sh`; the training
group's controller (`sim.group`) replacing a terminated node with a freshly booted one."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

import sim.nodes
import sim.stack
from sim import instance_store
from sim.transport import LocalTransport
from tests.sim.conftest import _have_namespaces, leftovers

pytestmark = pytest.mark.skipif(
    not _have_namespaces(), reason="simulated nodes need root, iproute2 and util-linux (ip netns, unshare)"
)


def _fs(device: str) -> str:
    return subprocess.run(["blkid", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True).stdout.strip()


def _mounted(target: Path) -> tuple[str, str]:
    found = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", str(target)], capture_output=True, text=True)
    return tuple(found.stdout.split()) if found.returncode == 0 else ("", "")


@pytest.fixture
def root(tmp_path):
    node = tmp_path / "sim-node0"
    sim.nodes.node_root(node)
    yield node
    assert instance_store.release(node) == []
    assert instance_store.mounts_under(tmp_path) == [] and instance_store.loops_under(tmp_path) == []


def test_a_dlami_node_s_scratch_is_a_bind_mount_of_the_ami_s_striped_volume(root):
    booted = instance_store.boot(root)
    devices = booted["devices"]
    assert len(devices) == instance_store.DISKS and all(d.startswith("/dev/loop") for d in devices)
    # EC2's names for instance-store disks, as scratch.sh looks them up
    links = sorted((root / instance_store.BY_ID).iterdir())
    assert sorted(str(link.resolve()) for link in links) == sorted(devices)
    assert all(link.name.startswith("nvme-Amazon_EC2_NVMe_Instance_Storage_AWS") for link in links)
    # dlami-nvme's volume, striped over both disks, at /opt/dlami/nvme; /scratch a directory of it
    assert [_fs(d) for d in devices] == ["btrfs", "btrfs"]
    assert _mounted(root / instance_store.DLAMI_MOUNT)[1] == "btrfs"
    source, fstype = _mounted(root / "scratch")
    assert fstype == "btrfs" and source.endswith("[/stratus-scratch]")
    journal = (root / "journal" / "stratus-scratch.service.log").read_text()
    assert "(set up by dlami-nvme) bind-mounted at" in journal and "exit 0" in journal
    (root / "scratch" / "runs" / "probe").write_text("on the instance store")
    assert (
        root / instance_store.DLAMI_MOUNT / "stratus-scratch" / "runs" / "probe"
    ).read_text() == "on the instance store"
    assert booted["dlami_nvme"] == "btrfs" and booted["scratch"] == [source, fstype]
    assert instance_store.release(root) == []
    assert _mounted(root / "scratch") == ("", "") and instance_store.loops_under(root) == []
    assert not list((root / "instance-store").glob("*.img"))


def test_on_a_plain_image_scratch_sh_formats_the_disk_with_xfs(root):
    booted = instance_store.boot(root, dlami=False)
    (device,) = booted["devices"]
    assert _mounted(root / "scratch") == (device, "xfs")
    assert f"formatting {device} (xfs)" in (root / "journal" / "stratus-scratch.service.log").read_text()


def test_a_blank_disk_under_a_name_blkid_remembers_holding_a_file_system_is_still_formatted(root):
    # blkid's cache (/run/blkid) keeps what a device name held before: an instance-store disk
    # that comes back blank under the same name (here a loop device given a new image) must be
    # probed itself (`blkid -p`), or scratch.sh would mount a file system that is not there.
    (device,) = instance_store.attach(root, disks=1)
    subprocess.run(["mkfs.btrfs", "-q", "-f", device], check=True, capture_output=True)
    assert _fs(device) == "btrfs"  # now in the cache
    subprocess.run(["losetup", "--detach", device], check=True)
    blank = root / "instance-store" / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(instance_store.DISK_BYTES)
    subprocess.run(["losetup", device, str(blank)], check=True)
    cached = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True)
    done = instance_store.scratch(root, 1)
    assert done.returncode == 0, done.stderr
    assert f"formatting {device} (xfs)" in done.stderr and _mounted(root / "scratch") == (device, "xfs")
    print(f"blkid's cache said {cached.stdout.strip() or 'nothing'!r} of the blank disk")


def test_disks_holding_a_file_system_are_never_striped_and_nothing_is_mounted(root):
    # Disks a dlami-nvme set up but did not mount (no unit file here, so no wait): scratch.sh
    # names them and fails rather than giving them to mdadm or training on the root volume.
    devices = instance_store.attach(root)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-d", "raid0", "-m", "raid1", *devices], check=True, capture_output=True)
    done = instance_store.scratch(root, len(devices))
    assert done.returncode == 1
    assert "FATAL: the NVMe disks are in use, not striping them" in done.stderr
    assert all(f"{d} (btrfs)" in done.stderr for d in devices)
    assert _mounted(root / "scratch") == ("", "")


def _until(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.2)


def test_the_group_controller_replaces_a_terminated_node_with_a_freshly_booted_one(tmp_path, monkeypatch):
    sim_dir = tmp_path / "sim"
    sim.stack.up(sim_dir, num_nodes=1, tag="t")
    described = json.loads((sim_dir / "sim.json").read_text())
    try:
        transport = LocalTransport(sim_dir)
        old = transport.group_state(sim.nodes.TRAINER_GROUP).members[0]
        # a node command sees the instance store at /scratch
        command = transport.send(old.instance_id, ["findmnt -n -o FSTYPE -T /scratch/runs"], comment="t", timeout_s=30)
        _until(lambda: transport.get_command_invocation(command, old.instance_id)["Status"] != "InProgress", "findmnt")
        assert transport.get_command_invocation(command, old.instance_id)["StandardOutputContent"].strip() == "btrfs"
        sim.nodes.suspend_processes(sim_dir, "Launch")
        # a launch whose boot fails (scratch.sh exits 1) leaves nothing behind but its root directory
        with monkeypatch.context() as m:
            m.setattr(instance_store, "scratch", lambda root, disks: subprocess.CompletedProcess([], 1, "", "no disks"))
            with pytest.raises(
                sim.nodes.NodeBootError, match="stratus-scratch.service failed on the simulated node sim-node1"
            ):
                sim.nodes.launch_node(sim_dir)
        described = sim.stack.read_sim_file(sim_dir)
        assert list(described["nodes"]) == [old.instance_id] and described["trainer_group"]["launched"] == 2
        assert (
            instance_store.mounts_under(sim_dir / "sim-node1")
            == instance_store.loops_under(sim_dir / "sim-node1")
            == []
        )
        sim.nodes.terminate_node(sim_dir, old.instance_id, abrupt=True)
        assert instance_store.mounts_under(sim_dir / old.instance_id) == []
        time.sleep(3)  # three controller intervals: suspended, it launches nothing
        assert len(transport.group_state(sim.nodes.TRAINER_GROUP).members) == 0
        sim.nodes.resume_processes(sim_dir, "Launch")
        _until(lambda: len(transport.group_state(sim.nodes.TRAINER_GROUP).members) == 1, "the replacement")
        (new,) = transport.group_state(sim.nodes.TRAINER_GROUP).members
        assert new.instance_id == "sim-node2" and new.private_ip != old.private_ip  # ids are never reused
        assert _mounted(sim_dir / new.instance_id / "scratch")[1] == "btrfs"
        scratch = sim_dir / new.instance_id / "scratch"
        assert [p.name for p in scratch.iterdir()] == ["runs"] and not list((scratch / "runs").iterdir())
        assert (
            f"launched sim-node2 ({new.private_ip}) for a group of 1 short by 1" in (sim_dir / "group.log").read_text()
        )
        described = json.loads((sim_dir / "sim.json").read_text())
    finally:
        sim.stack.down(sim_dir)
    assert not leftovers(described)
