"""User data as rendered: contract paths, size, shellcheck on every script, systemd-analyze on every unit."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from infra.builders import userdata
from infra.config.catalog import CATALOG
from runtime.contract import HOST_PYTHON, NODE_ENV_FILE, PREPARE_UNIT, bundle_uri, model_repository_uri
from tests.infra.builders.sandbox import Sandbox

BUCKETS = {"models": "m", "datasets": "d"}
USER_DATA_LIMIT = 16384  # EC2 rejects larger user data


def _trainer(instance_type: str = "p5.48xlarge", scratch: str = "nvme") -> str:
    return userdata.trainer_user_data(
        region="us-east-1", buckets=BUCKETS, instance_type=CATALOG[instance_type], scratch=scratch
    )


def _server() -> str:
    return userdata.serving_user_data(
        region="us-east-1",
        models_bucket="m",
        model_name="mlp-binary",
        port=8000,
        token_parameter="/o/s/dev/token",
        grpc_port=8001,
        tls_cert_parameter="/o/s/dev/serving-tls-cert",
        tls_key_parameter="/o/s/dev/serving-tls-key",
    )


def test_user_data_follows_the_runtime_contract_and_fits_ec2():
    trainer, server = _trainer(), _server()
    for text in (trainer, server):
        assert f"STRATUS_BUNDLE_URI={bundle_uri('m')}" in text
        assert f"/etc/systemd/system/{PREPARE_UNIT}" in text and f"--no-block {userdata.SCRATCH_UNIT}" in trainer
        assert len(text.encode()) < USER_DATA_LIMIT
    assert f'{NODE_ENV_FILE}"' in trainer and "STRATUS_DATASETS_BUCKET=d" in trainer
    assert f"exec {HOST_PYTHON} -m runtime serve" in server and f"--repo {model_repository_uri('m')} " in server
    assert "--port 8000 --grpc-port 8001 " in server
    tls = "--tls-cert-ssm-parameter /o/s/dev/serving-tls-cert --tls-key-ssm-parameter /o/s/dev/serving-tls-key"
    assert tls in server


def test_nccl_settings_follow_the_instance_type():
    p5, g6e, g5 = (userdata.nccl_env(CATALOG[t]) for t in ("p5.48xlarge", "g6e.48xlarge", "g5.12xlarge"))
    assert p5["FI_PROVIDER"] == "efa" and p5["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert g6e["FI_PROVIDER"] == "efa" and "FI_EFA_USE_DEVICE_RDMA" not in g6e
    assert "FI_PROVIDER" not in g5 and g5["NCCL_SOCKET_IFNAME"] == "^lo,docker"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian: apt-get install -y {tool.split('-')[0]})")
    return path


def test_shellcheck_passes_on_every_script_the_stack_renders(tmp_path):
    shellcheck = _need("shellcheck")
    scripts = {"trainer-nvme.sh": _trainer(), "trainer-ebs.sh": _trainer("g5.12xlarge", "ebs"), "server.sh": _server()}
    for name in ("prepare.sh", "scratch.sh"):
        scripts[name] = (userdata.HOST_DIR / name).read_text()
    written = re.findall(r"cat > \"\$R(\S+)\" <<'STRATUS_EOF'\n(.*?)\nSTRATUS_EOF", _server(), re.S)
    scripts["serve.sh"] = dict(written)["/opt/stratus/serve.sh"]
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run([shellcheck, *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    (tmp_path / "bad.sh").write_text("#!/bin/bash\nrm -rf $1/*\n")  # the check bites
    assert subprocess.run([shellcheck, str(tmp_path / "bad.sh")], capture_output=True).returncode != 0


def _verify(root) -> subprocess.CompletedProcess:
    units = sorted(str(p.relative_to(root)) for p in (root / "etc/systemd/system").glob("*.service"))
    return subprocess.run(
        [_need("systemd-analyze"), "verify", f"--root={root}", *units], capture_output=True, text=True, cwd=root
    )


@pytest.mark.parametrize("host", ["trainer", "server"])
def test_systemd_analyze_verify_passes_on_every_unit_the_stack_writes(tmp_path, host):
    box = Sandbox(tmp_path)
    shutil.copytree("/usr/lib/systemd/system", box.root / "usr/lib/systemd/system", symlinks=True)
    (box.root / "usr/bin").mkdir(parents=True, exist_ok=True)
    for tool in ("test", "kill"):  # ExecStartPre= and ExecReload= name them
        shutil.copy(f"/usr/bin/{tool}", box.root / "usr/bin" / tool)
    result = box.run(_trainer() if host == "trainer" else _server())
    assert result.returncode == 0, result.stderr
    verified = _verify(box.root)
    assert verified.returncode == 0 and "stratus" not in verified.stderr, verified.stderr
    (box.root / "opt/stratus/prepare.sh").unlink()  # the check bites: a unit whose command is missing
    assert _verify(box.root).returncode != 0
