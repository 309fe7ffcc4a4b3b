"""The node command's checks before training, run under sh: the run directory on the scratch mount
(a real bind mount in a private mount namespace, as scratch.sh makes one on a Deep Learning AMI),
EFA's provider (a `fi_info` stand-in) and NCCL's log for the preflight, the library path extended
with node.env's EFA libraries, the operator's bandwidth floor, and the ops' build env.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from infra.builders import userdata
from infra.config.catalog import CATALOG
from runtime.common.nodeenv import NodeEnv, read_env_file
from runtime.contract import HOST_OPS_ENV, HOST_TORCH_EXTENSIONS, NODE_ENV_FILE, SCRATCH_MOUNT
from runtime.remote.nodes import NodeJob, node_script
from runtime.remote.outputs import parse_outputs
from tests.runtime.remote.test_plan import outputs_dict


def _script(**job) -> list[str]:
    outputs = parse_outputs(
        outputs_dict(trainer_instance_ids=["i-1"], trainer_private_ips=["10.0.0.1"], trainer_slots_per_node=8), "test"
    )
    return node_script(
        NodeJob(outputs=outputs, run_name="r", train_args=(), bundle_sha256="0" * 64, launch_id="l", **job), 0
    )


def _sh(script: str, env: dict[str, str], *prefix: str) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.run([*prefix, "sh", "-c", script], env=full, capture_output=True, text=True, timeout=30)


def _can_bind_mount() -> bool:
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_the_node_refuses_to_train_off_the_scratch_mount(tmp_path):
    (check,) = [line for line in _script() if "findmnt" in line]
    scratch, disk = tmp_path / "scratch", tmp_path / "dlami-nvme"
    (scratch / "runs/r").mkdir(parents=True)
    (disk / "runs/r").mkdir(parents=True)
    script = check.replace(SCRATCH_MOUNT, str(scratch)) + "\necho training"
    refused = _sh(script, {})  # /scratch is a plain directory of the root volume: the unit failed
    assert refused.returncode == 1 and "training" not in refused.stdout
    assert f"{scratch}/runs/r is not on the scratch volume mounted at {scratch}" in refused.stderr
    assert "journalctl -u stratus-scratch.service" in refused.stderr
    # a type without local disks or a scratch volume trains on the root volume by design
    assert _sh(script, {"STRATUS_SCRATCH": "none"}).stdout == "training\n"
    if not _can_bind_mount():
        pytest.skip("no private mount namespace here (unshare --mount needs root)")
    mounted = _sh(f"mount --bind {disk} {scratch} && {script}", {"STRATUS_SCRATCH": "nvme"}, "unshare", "--mount")
    assert mounted.returncode == 0 and mounted.stdout == "training\n", mounted.stderr


def test_efa_nodes_check_the_provider_and_log_nccls_network_choice(tmp_path):
    lines = _script()
    start = lines.index('if [ "${FI_PROVIDER:-}" = efa ]; then')
    block = "\n".join(lines[start : lines.index("fi", start) + 1]).replace(SCRATCH_MOUNT, str(tmp_path))
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    fi_info = stand_ins / "fi_info"
    fi_info.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/fi_info.calls\nexit 1\n')
    fi_info.chmod(0o755)
    path = f"{stand_ins}:{os.environ['PATH']}"
    script = block + '\necho "debug=${NCCL_DEBUG:-} file=${NCCL_DEBUG_FILE:-}"'
    missing = _sh(script, {"FI_PROVIDER": "efa", "PATH": path})
    assert missing.returncode == 1 and "fi_info -p efa finds no EFA device" in missing.stderr
    assert (tmp_path / "fi_info.calls").read_text() == "-p efa -t FI_EP_RDM\n"
    fi_info.write_text("#!/bin/sh\nexit 0\n")
    found = _sh(script, {"FI_PROVIDER": "efa", "PATH": path})
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[-1] == f"debug=INFO file={tmp_path}/runs/r/nccl/node0.%h.%p.log"
    assert (tmp_path / "runs/r/nccl").is_dir()
    # no EFA (node.env without FI_PROVIDER): nothing checked, NCCL's level untouched
    assert _sh(script, {"PATH": path}).stdout == "debug= file=\n"


def test_node_env_extends_the_library_path_and_sets_the_types_floor(tmp_path):
    node_env = tmp_path / "node.env"
    text = userdata._env_text({**userdata.nccl_env(CATALOG["p5.48xlarge"]), "STRATUS_SCRATCH": "nvme"})
    node_env.write_text(text)
    env = NodeEnv.load({}, node_env)
    assert (env.min_bus_gbps, env.preflight_mib, env.fabric) == (100.0, 256, "efa")
    assert read_env_file(node_env)["NCCL_NET"] == "AWS Libfabric"
    assert userdata.efa_floor_gbps(CATALOG["p4d.24xlarge"]) == 12.5
    assert "STRATUS_MIN_BUS_GBPS" not in userdata.nccl_env(CATALOG["g5.12xlarge"])  # no EFA: no default floor
    lines = _script(min_bus_gbps=40.0)
    preamble = "\n".join(lines[: lines.index(next(x for x in lines if x.startswith("export STRATUS_")))])
    script = (
        preamble.replace(NODE_ENV_FILE, str(node_env)).replace(HOST_OPS_ENV, str(tmp_path / "ops.env"))
        + "\n"
        + next(x for x in lines if x.startswith("export STRATUS_MIN_BUS_GBPS"))
        + '\necho "$LD_LIBRARY_PATH|$NCCL_NET|$STRATUS_MIN_BUS_GBPS|$TORCH_EXTENSIONS_DIR|${CUDA_HOME:-}"'
    )
    # as prepare wrote it (runtime.remote.ops --env-file): the runs build nothing again
    (tmp_path / "ops.env").write_text(f"CUDA_HOME=/usr/local/cuda-12.8\nTORCH_EXTENSIONS_DIR={HOST_TORCH_EXTENSIONS}\n")
    result = _sh(script, {"LD_LIBRARY_PATH": "/usr/local/cuda/lib64"})
    assert result.returncode == 0, result.stderr
    # the AMI's path stays after EFA's; the operator's floor wins over node.env's
    library_path = f"{userdata.EFA_LIBRARY_PATH}:/usr/local/cuda/lib64"
    expected = f"{library_path}|AWS Libfabric|40|{HOST_TORCH_EXTENSIONS}|/usr/local/cuda-12.8"
    assert result.stdout.strip() == expected
    assert _sh(script, {}).stdout.startswith(f"{userdata.EFA_LIBRARY_PATH}|")  # no trailing ':'
