"""The rendered user data and host scripts, executed under bash in a sandbox against moto's S3.

What would change the machine is a recording stand-in (tests/infra/builders/sandbox.py); the
scripts' own logic (Python selection per AMI family, the offline install, the torch check, the
NVMe RAID0 or gp3 scratch) runs for real.
"""

from __future__ import annotations

import boto3
import pytest

from infra.builders import userdata
from infra.config.catalog import CATALOG
from runtime.common.options import parse_options
from runtime.contract import APP_DIR, HOST_PYTHON, NODE_ENV_FILE, PREPARE_UNIT, bundle_uri
from runtime.remote.nodes import NodeJob, node_script
from runtime.remote.outputs import parse_outputs
from runtime.serve.config import ServeConfig
from tests.infra.builders.sandbox import HostBundle, Sandbox, bundle_bytes, fake_package_wheel, fake_wheel

BUCKETS = {"models": "stratus-models", "datasets": "stratus-datasets", "checkpoints": "c", "logs": "l"}
PREPARE = '"$STRATUS_SYSROOT/opt/stratus/prepare.sh"'
SCRATCH = '"$STRATUS_SYSROOT/opt/stratus/scratch.sh"'


def _aws(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("AWS_")}


def _upload(env: dict, host_bundle: HostBundle) -> None:
    """The bundle at its key and its wheelhouse (if any) at the key its manifest names."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKETS["models"])
    bucket, key = bundle_uri(BUCKETS["models"])[5:].split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=host_bundle.bundle)
    if host_bundle.wheelhouse is not None:
        s3.put_object(Bucket=bucket, Key=host_bundle.wheelhouse_key, Body=host_bundle.wheelhouse)


def _node(tmp_path, instance_type: str = "p5.48xlarge", scratch: str = "nvme", os_id: str = "amzn") -> Sandbox:
    box = Sandbox(tmp_path)
    (box.root / "etc").mkdir()
    (box.root / "etc" / "os-release").write_text(f'NAME="test"\nID="{os_id}"\n')
    text = userdata.trainer_user_data(
        region="us-east-1", buckets=BUCKETS, instance_type=CATALOG[instance_type], scratch=scratch
    )
    result = box.run(text)
    assert result.returncode == 0, result.stderr
    return box


def _venv_site(box: Sandbox):
    (site,) = (box.root / "opt/stratus/venv/lib").glob("python3.11/site-packages")
    return site


def test_trainer_user_data_installs_python_and_the_cuda_torch_offline_and_starts_its_units(tmp_path, aws_env):
    # GPU hosts also swap onnxruntime-genai for its CUDA build of the pinned version
    genai = [
        fake_package_wheel(tmp_path, name, "0.18.0", "onnxruntime_genai")
        for name in ("onnxruntime-genai", "onnxruntime-genai-cuda")
    ]
    requirements = "torch==2.13.0\nonnxruntime-genai==0.18.0\n"
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cu128", "12.8"), requirements, tuple(genai)))
    box = _node(tmp_path)
    (tmp_path / "ami").mkdir()  # the DLAMI's own torch is another version: left alone
    box.ami_framework_python(fake_wheel(tmp_path / "ami", "2.12.0+cu128", "12.8"))
    assert box.calls("systemctl") == [
        "daemon-reload",
        f"enable --now --no-block {userdata.SCRATCH_UNIT} {PREPARE_UNIT}",
    ]
    node_env = (box.root / "etc/stratus/node.env").read_text()
    assert "FI_PROVIDER=efa" in node_env and "FI_EFA_USE_DEVICE_RDMA=1" in node_env
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    # AL2023: python3 is 3.9, so python3.11 comes from dnf; the wheels are installed offline.
    assert box.calls("dnf") == ["install -y -q python3.11 python3.11-pip"]
    assert box.calls("aws")[0].startswith("s3 cp --region us-east-1 --only-show-errors s3://stratus-models/")
    assert "installing" in result.stderr and "offline from the wheelhouse" in result.stderr
    assert "torch 2.13.0+cu128, CUDA 12.8, 8 GPUs" in result.stdout
    assert "its torch 2.12.0+cu128 is not the pinned torch==2.13.0" in result.stderr
    assert "installing the CUDA build of torch==2.13.0" in result.stderr
    assert not (_venv_site(box) / "stratus-ami-torch.pth").exists()
    assert "installing onnxruntime-genai-cuda==0.18.0" in result.stderr
    python = box.root / "opt/stratus/venv/bin/python"
    which = box.run(f'"{python}" -c "import onnxruntime_genai as og; print(og.DISTRIBUTION)"')
    assert which.stdout.strip() == "onnxruntime-genai-cuda", which.stderr
    (torch_init,) = (box.root / "opt/stratus/venv/lib").glob("python3.11/site-packages/torch/__init__.py")
    assert (box.root / "opt/stratus/.ready").exists()
    # GPUs not visible yet (driver still loading): a failure systemd retries, not exit 78
    torch_init.write_text(torch_init.read_text().replace("return True", "return False"))
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 1 and "sees no GPU" in result.stderr, result.stderr


def test_a_cpu_torch_on_a_gpu_node_fails_loudly_and_is_not_retried(tmp_path, aws_env):
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cpu", None)))
    box = _node(tmp_path)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr
    assert "torch 2.13.0+cpu is a CPU-only build; GPU hosts need the CUDA build" in result.stderr
    assert f"RestartPreventExitStatus={userdata.EX_CONFIG}" in userdata.PREPARE_SERVICE
    assert not (box.root / "opt/stratus/.ready").exists()


def test_the_amis_cuda_torch_of_the_pinned_version_is_used_instead_of_installing_one(tmp_path, aws_env):
    (tmp_path / "ami").mkdir()
    # the bundle's torch cannot satisfy torch==2.13.0: only the AMI's can, with no download
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.12.0+cu128", "12.8")))
    box = _node(tmp_path)
    ami_site = box.ami_framework_python(fake_wheel(tmp_path / "ami", "2.13.0+cu128", "12.8"))
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    assert f"using the AMI's torch 2.13.0+cu128 (CUDA 12.8) from {box.root}/opt/pytorch/bin/python" in result.stderr
    assert "torch 2.13.0+cu128, CUDA 12.8, 8 GPUs" in result.stdout
    site = _venv_site(box)
    assert not (site / "torch").exists() and (site / "stratus-ami-torch.pth").read_text() == f"{ami_site}\n"
    python = box.root / "opt/stratus/venv/bin/python"
    imported = box.run(f'"{python}" -c "import torch; print(torch.__file__)"')
    assert imported.stdout.strip() == str(ami_site / "torch/__init__.py"), imported.stderr


def test_no_cuda_torch_of_the_pinned_version_anywhere_fails_loudly(tmp_path, aws_env):
    (tmp_path / "ami").mkdir()
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cpu", None)))
    box = _node(tmp_path)
    box.ami_framework_python(fake_wheel(tmp_path / "ami", "2.12.0+cu128", "12.8"))
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr
    assert "its torch 2.12.0+cu128 is not the pinned torch==2.13.0" in result.stderr
    assert "torch 2.13.0+cpu is a CPU-only build; GPU hosts need the CUDA build" in result.stderr
    assert not (box.root / "opt/stratus/.ready").exists()


@pytest.mark.parametrize(
    "os_id,wheel_tag,expected",
    [
        ("ubuntu", "cp311", "apt-get could not install python3.11"),
        ("rhel", "cp311", "no known way to install it on 'rhel'"),
    ],
)
def test_python_selection_per_ami_family(tmp_path, aws_env, os_id, wheel_tag, expected):
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cu128", "12.8", tag=wheel_tag)))
    box = _node(tmp_path, os_id=os_id)
    box.stand_in("apt-get", "exit 100")  # no egress: the Ubuntu mirrors are unreachable
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert box.calls("dnf") == []
    if os_id == "ubuntu":  # the package lists are updated first; without egress that already fails
        assert box.calls("apt-get") == ["update -q"]


def test_wheels_for_another_python_are_refused_before_installing(tmp_path, aws_env):
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cu128", "12.8", tag="cp312")))
    box = _node(tmp_path)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG
    assert "holds no cp311 wheel" in result.stderr and "stratus wheels --dest DIR" in result.stderr
    assert not (box.root / "opt/stratus/venv").exists()
    assert [c for c in box.calls("aws") if "/runtime/wheelhouse/" in c] == []  # refused before fetching it


def test_nvme_scratch_stripes_every_instance_store_disk(tmp_path):
    box = _node(tmp_path, "p5.48xlarge", "nvme")
    by_id = box.root / "dev/disk/by-id"
    by_id.mkdir(parents=True)
    for i in range(1, 9):
        (box.root / f"dev/nvme{i}n1").touch()
        (by_id / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{i:04d}").symlink_to(box.root / f"dev/nvme{i}n1")
        # the namespace alias of the same disk must not be counted twice
        (by_id / f"nvme-Amazon_EC2_NVMe_Instance_Storage_AWS{i:04d}_1").symlink_to(box.root / f"dev/nvme{i}n1")
    box.stand_in("mdadm", 'case "$1" in --assemble) exit 1;; esac')  # blank disks: no array to assemble
    result = box.run(SCRATCH, stack_env=True)
    assert result.returncode == 0, result.stderr
    array = f"{box.root}/dev/md/stratus-scratch"
    disks = " ".join(f"{box.root}/dev/nvme{i}n1" for i in range(1, 9))
    create = f"--create {array} --level=0 --raid-devices=8 --run --force {disks}"
    assert box.calls("mdadm") == [f"--assemble {array} {disks}", create]
    assert box.calls("mkfs.xfs") == [f"-q -f {array}"]
    assert box.calls("mount") == [f"-o noatime {array} {box.root}/scratch"]
    # after a reboot: the array assembles and its file system is mounted, not formatted again
    box.log.write_text("")
    box.stand_in("mdadm")
    box.stand_in("blkid", "exit 0")
    assert box.run(SCRATCH, stack_env=True).returncode == 0
    assert box.calls("mdadm") == [f"--assemble {array} {disks}"] and box.calls("mkfs.xfs") == []
    assert box.calls("mount") == [f"-o noatime {array} {box.root}/scratch"]


def test_ebs_scratch_formats_and_mounts_the_gp3_volume_without_raid(tmp_path):
    box = _node(tmp_path, "g5.12xlarge", "ebs")
    assert "FI_PROVIDER" not in (box.root / "etc/stratus/node.env").read_text()
    (box.root / "dev").mkdir()
    (box.root / "dev/sdf").touch()
    result = box.run(SCRATCH, stack_env=True)
    assert result.returncode == 0, result.stderr
    assert box.calls("mdadm") == []
    assert box.calls("mount") == [f"-o noatime {box.root}/dev/sdf {box.root}/scratch"]


def test_missing_nvme_disks_fail_the_scratch_unit(tmp_path):
    box = _node(tmp_path, "p5.48xlarge", "nvme")
    result = box.run(SCRATCH, stack_env=True)
    assert result.returncode == 1 and "no NVMe instance-store disk" in result.stderr
    assert box.calls("mount") == []


def test_serving_user_data_creates_its_user_and_starts_prepare_then_serve(tmp_path):
    box = Sandbox(tmp_path)
    box.stand_in("id", "exit 1")  # no `stratus` user yet
    text = userdata.serving_user_data(
        region="us-east-1", models_bucket="m", model_name="mlp-binary", port=8000, token_parameter="/o/p/s/token"
    )
    result = box.run(text)
    assert result.returncode == 0, result.stderr
    assert box.calls("useradd") == ["--system --no-create-home --shell /sbin/nologin stratus"]
    assert box.calls("systemctl")[-1] == f"enable --now --no-block {PREPARE_UNIT} {userdata.SERVE_UNIT}"
    env = (box.root / "etc/stratus/stack.env").read_text()
    assert "STRATUS_GPU=0" in env and "STRATUS_SCRATCH" not in env
    assert "--token-ssm-parameter /o/p/s/token" in (box.root / "opt/stratus/serve.sh").read_text()


@pytest.mark.parametrize(
    ("grpc_port", "tls"),
    [(8001, True), (0, True), (8001, False)],
    ids=["grpc-tls", "http-only-tls", "grpc-no-certificate"],
)
def test_the_serve_script_starts_stratus_serve_with_flags_it_accepts(tmp_path, grpc_port, tls):
    box = Sandbox(tmp_path)
    box.stand_in("curl", 'case " $* " in *" -X PUT "*) echo session;; *) echo 10.42.1.7;; esac')
    parameters = {"tls_cert_parameter": "/o/p/s/tls-cert", "tls_key_parameter": "/o/p/s/tls-key"} if tls else {}
    text = userdata.serving_user_data(
        region="us-east-1",
        models_bucket="m",
        model_name="mlp-binary",
        port=8000,
        token_parameter="/o/p/s/token",
        grpc_port=grpc_port,
        **parameters,
    )
    assert box.run(text).returncode == 0
    # serve.sh as written, its absolute paths moved into the sysroot; the venv's python records argv.
    script = (box.root / "opt/stratus/serve.sh").read_text().replace(APP_DIR, f"{box.root}{APP_DIR}")
    (box.root / "opt/stratus/app").mkdir(parents=True)
    python = box.root / HOST_PYTHON.lstrip("/")
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\n')
    python.chmod(0o755)
    result = box.run(script)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:3] == ["-m", "runtime", "serve"]
    # The server's own parser: an unknown or renamed flag would exit 2 here.
    cfg = parse_options(ServeConfig, argv[3:], prog="stratus serve")
    assert (cfg.host, cfg.port, cfg.grpc_port) == ("10.42.1.7", 8000, grpc_port)
    assert (cfg.repo, cfg.model, cfg.token_ssm_parameter) == ("s3://m/models", "mlp-binary", "/o/p/s/token")
    assert ("--grpc-port" in argv) == bool(grpc_port)
    if tls:
        assert (cfg.tls_cert_ssm_parameter, cfg.tls_key_ssm_parameter) == ("/o/p/s/tls-cert", "/o/p/s/tls-key")
        assert not cfg.insecure_plain_http
    else:  # no certificate parameters: plain HTTP, said on the command line (and logged by the server)
        assert cfg.insecure_plain_http and cfg.tls_source() is None


def test_serving_user_data_refuses_half_a_certificate():
    with pytest.raises(ValueError, match="tls_cert_parameter and tls_key_parameter together"):
        userdata.serving_user_data(
            region="us-east-1",
            models_bucket="m",
            model_name="mlp-binary",
            port=8000,
            token_parameter="/o/p/s/token",
            tls_cert_parameter="/o/p/s/tls-cert",
        )


def test_the_launch_command_exports_the_nodes_nccl_settings(tmp_path):
    box = _node(tmp_path, "p5.48xlarge", "nvme")
    outputs = parse_outputs(
        {
            "region": "us-east-1",
            "kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/k",
            "datasets_bucket": "d",
            "checkpoints_bucket": "c",
            "models_bucket": "m",
            "logs_bucket": "l",
            "trainer_instance_ids": ["i-1"],
            "trainer_private_ips": ["10.0.0.1"],
            "trainer_slots_per_node": 8,
        },
        "test",
    )
    job = NodeJob(outputs=outputs, run_name="r", train_args=(), bundle_sha256="0" * 64, launch_id="l")
    lines = node_script(job, 0)
    (line,) = [x for x in lines if NODE_ENV_FILE in x]
    (extend,) = [x for x in lines if "STRATUS_EFA_LIBRARY_PATH" in x]
    # the node's file, at its sysroot path: the values must survive shell parsing unchanged, and the
    # library path keeps what the AMI's environment had (extended, not overwritten)
    script = line.replace(NODE_ENV_FILE, f"{box.root}{NODE_ENV_FILE}") + f"\n{extend}"
    result = box.run(script + '\necho "$FI_PROVIDER|$NCCL_NET|$LD_LIBRARY_PATH"', {"LD_LIBRARY_PATH": "/usr/lib/ami"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"efa|AWS Libfabric|{userdata.EFA_LIBRARY_PATH}:/usr/lib/ami"
