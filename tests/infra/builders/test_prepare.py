"""prepare.sh beyond picking Python: the cached venv, the offline install's failures, DeepSpeed's
ops built at prepare time and the CUDA checks, run under bash in the sandbox against moto's S3.

DeepSpeed is a stand-in wheel (`sandbox.fake_deepspeed_wheel`) whose op builders "build" into
TORCH_EXTENSIONS_DIR when a C++ compiler is on PATH; `runtime/remote/ops.py` (the real one, shipped
in the test bundle) drives it. `nvidia-smi` and `nvcc` are stand-ins printing a driver's and a
toolkit's CUDA version.
"""

from __future__ import annotations

import boto3

from infra.builders import userdata
from runtime.contract import HOST_TORCH_EXTENSIONS, bundle_uri
from tests.infra.builders.sandbox import (
    BASE_PYTHON,
    HostBundle,
    bundle_bytes,
    fake_deepspeed_wheel,
    fake_package_wheel,
    fake_wheel,
)
from tests.infra.builders.test_host_scripts import BUCKETS, PREPARE, _aws, _node, _upload

REQUIREMENTS = "torch==2.13.0\ndeepspeed==0.19.8\n"


def _gpu_bundle(tmp_path, requirements: str = REQUIREMENTS, *extra) -> HostBundle:
    torch = fake_wheel(tmp_path, "2.13.0+cu128", "12.8")
    return bundle_bytes(torch, requirements, (fake_deepspeed_wheel(tmp_path), *extra))


def _cuda(box, driver: str = "12.8", toolkits: tuple[str, ...] = ("12.8",)) -> None:
    box.stand_in("nvidia-smi", f'echo "| NVIDIA-SMI 570.86   Driver Version: 570.86   CUDA Version: {driver} |"')
    for version in toolkits:
        nvcc = box.root / f"usr/local/cuda-{version}/bin/nvcc"
        nvcc.parent.mkdir(parents=True)
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, V{version}.41'\n")
        nvcc.chmod(0o755)


def test_gpu_node_builds_the_ops_once_with_the_matching_toolkit_and_a_relaunch_installs_nothing(tmp_path, aws_env):
    first = _gpu_bundle(tmp_path)
    _upload(aws_env, first)
    box = _node(tmp_path)
    _cuda(box, toolkits=("12.4", "12.8"))
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    # no compiler on this AL2023 host: installed with the headers, from the AL2023 repository
    assert box.calls("dnf") == ["install -y -q python3.11 python3.11-pip", "install -y -q python3.11-devel gcc-c++"]
    assert "CUDA: torch 12.8, toolkit " in result.stderr
    ext = box.root / HOST_TORCH_EXTENSIONS.lstrip("/")  # where the node command finds them (ops.env)
    cuda = box.root / "usr/local/cuda-12.8"
    for op in ("FusedAdamBuilder", "CPUAdamBuilder"):
        assert (ext / op / "built-with").read_text() == f"{cuda}|cuda", op
        assert f"DeepSpeed op {op} built and imported" in result.stderr
    # the training runs get the same toolkit and extensions directory
    ops_env = (box.root / "opt/stratus/ops.env").read_text().splitlines()
    assert ops_env == [f"CUDA_HOME={cuda}", f"TORCH_EXTENSIONS_DIR={ext}"]
    assert "runtime venv built (" in result.stderr
    # a relaunch with the same requirements: the venv is kept (nothing installed), the ops checked
    sentinel = box.root / "opt/stratus/venv/kept"
    sentinel.touch()
    fetched = len(box.calls("aws"))
    again = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert again.returncode == 0, again.stderr
    assert "runtime venv up to date (" in again.stderr and "offline from the wheelhouse" not in again.stderr
    assert sentinel.exists() and (box.root / "opt/stratus/.ready").exists()
    # ... and it downloaded the small bundle only, not the wheelhouse
    assert [c.split()[-2] for c in box.calls("aws")[fetched:]] == [bundle_uri(BUCKETS["models"])]
    # another pin: rebuilt from scratch, from the new wheelhouse
    changed = _gpu_bundle(
        tmp_path, REQUIREMENTS + "six==1.17.0\n", fake_package_wheel(tmp_path, "six", "1.17.0", "six")
    )
    _upload(aws_env, changed)
    third = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert third.returncode == 0 and "runtime venv built (" in third.stderr, third.stderr
    assert not sentinel.exists()
    assert wheelhouse_fetches(box) == [first.wheelhouse_uri, changed.wheelhouse_uri]


def wheelhouse_fetches(box) -> list[str]:
    """The wheelhouse URIs the node's prepare.sh downloaded, in order."""
    return [c.split()[-2] for c in box.calls("aws") if "/runtime/wheelhouse/" in c]


def test_the_venv_is_built_from_the_wheelhouse_object_not_the_bundle(tmp_path, aws_env):
    house = _gpu_bundle(tmp_path)
    assert house.wheelhouse_uri == f"s3://{BUCKETS['models']}/{house.wheelhouse_key}"
    _upload(aws_env, house)
    box = _node(tmp_path)
    _cuda(box)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    assert f"fetching the wheelhouse {house.wheelhouse_uri} ({len(house.wheelhouse)} bytes)" in result.stderr
    assert "installing" in result.stderr and "offline from the wheelhouse" in result.stderr
    assert wheelhouse_fetches(box) == [house.wheelhouse_uri]
    app = box.root / "opt/stratus"
    # the bundle carried the manifest, no wheel; the unpacked wheelhouse is gone after the install
    assert (app / "app/wheels.json").is_file() and not list(app.glob("app/**/*.whl"))
    assert list(app.glob("wheelhouse*")) == []
    site = next((app / "venv/lib").glob("python3.11/site-packages"))
    assert (site / "torch/__init__.py").is_file() and (site / "deepspeed/accelerator/__init__.py").is_file()


def test_a_wheelhouse_that_is_not_the_one_the_bundle_names_fails_once_naming_it(tmp_path, aws_env):
    house = _gpu_bundle(tmp_path)
    _upload(aws_env, house)
    damaged = bytearray(house.wheelhouse)
    damaged[len(damaged) // 2] ^= 0xFF  # same key, same size: the launcher's size check cannot see it
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.put_object(Bucket=BUCKETS["models"], Key=house.wheelhouse_key, Body=bytes(damaged))
    box = _node(tmp_path)
    _cuda(box)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr  # not retried
    assert f"{house.wheelhouse_uri} is not the wheelhouse the bundle names" in result.stderr
    assert f"aws s3 rm {house.wheelhouse_uri}" in result.stderr
    app = box.root / "opt/stratus"
    assert not (app / "venv").exists() and not (app / ".ready").exists()
    assert list(app.glob("wheelhouse*")) == []  # the download removed, pass or fail


def test_a_wheel_missing_from_the_wheelhouse_fails_once_naming_it(tmp_path, aws_env):
    _upload(aws_env, _gpu_bundle(tmp_path, REQUIREMENTS + "pyyaml==6.0.3\n"))
    box = _node(tmp_path)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr  # RestartPreventExitStatus: not retried
    assert "the wheelhouse has no wheel of pyyaml==6.0.3 for this host" in result.stderr
    assert "stratus wheels --dest DIR" in result.stderr
    assert not (box.root / "opt/stratus/venv").exists() and not (box.root / "opt/stratus/.ready").exists()
    assert list((box.root / "opt/stratus").glob("wheelhouse*")) == []


def test_a_driver_older_than_torchs_cuda_is_named_and_not_retried(tmp_path, aws_env):
    _upload(aws_env, _gpu_bundle(tmp_path))
    box = _node(tmp_path)
    _cuda(box, driver="11.8")
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr
    assert "the NVIDIA driver supports CUDA 11.8 but torch was built for CUDA 12.8" in result.stderr
    assert not (box.root / "opt/stratus/.ready").exists()


def test_a_toolkit_of_another_cuda_major_is_named(tmp_path, aws_env):
    _upload(aws_env, _gpu_bundle(tmp_path))
    box = _node(tmp_path)
    _cuda(box, toolkits=())
    (box.root / "usr/local/cuda/bin").mkdir(parents=True)
    (box.root / "usr/local/cuda/bin/nvcc").write_text(
        "#!/bin/sh\necho 'Cuda compilation tools, release 11.8, V11.8.89'\n"
    )
    (box.root / "usr/local/cuda/bin/nvcc").chmod(0o755)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == userdata.EX_CONFIG, result.stderr
    assert f"the CUDA toolkit at {box.root}/usr/local/cuda is 11.8 but torch was built for CUDA 12.8" in result.stderr


def test_no_compiler_to_be_had_fails_naming_it(tmp_path, aws_env):
    _upload(aws_env, _gpu_bundle(tmp_path))
    box = _node(tmp_path, os_id="ubuntu")
    (box.bin / "python3.11").symlink_to(BASE_PYTHON)  # this Ubuntu has Python 3.11, not the compiler
    box.stand_in("apt-get", 'case "$1" in update) exit 0;; *) exit 100;; esac')  # the mirror lacks it
    _cuda(box)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode != 0
    assert "apt-get could not install python3.11-dev g++" in result.stderr, result.stderr
    # a fresh instance has no package lists: update before every first install
    assert box.calls("apt-get") == ["update -q", "install -y -q python3.11-dev g++"]


def test_ubuntu_updates_its_package_lists_before_installing_python(tmp_path, aws_env):
    _upload(aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cu128", "12.8")))
    box = _node(tmp_path, os_id="ubuntu")
    box.stand_in("apt-get", 'case "$1" in update) exit 0;; *) exit 100;; esac')
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 1 and "apt-get could not install python3.11" in result.stderr
    assert box.calls("apt-get") == ["update -q", "install -y -q python3.11 python3.11-venv"]


def test_a_cpu_node_builds_the_cpu_ops_only(tmp_path, aws_env):
    _upload(
        aws_env, bundle_bytes(fake_wheel(tmp_path, "2.13.0+cpu", None), REQUIREMENTS, (fake_deepspeed_wheel(tmp_path),))
    )
    box = _node(tmp_path)
    env = (box.root / "etc/stratus/stack.env").read_text().replace("STRATUS_GPU=1", "STRATUS_GPU=0")
    (box.root / "etc/stratus/stack.env").write_text(env)
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    ext = box.root / "opt/stratus/torch-extensions"
    # the Adam of optimizer offload, and the CPU accelerator's collectives (loaded when the ranks start)
    assert sorted(p.name for p in ext.iterdir()) == ["CPUAdamBuilder", "ShareMemCommBuilder"]
    assert (ext / "CPUAdamBuilder/built-with").read_text() == "|cpu"
    assert (ext / "ShareMemCommBuilder/built-with").read_text() == "|cpu"
    assert box.calls("nvidia-smi") == []


def test_a_serving_host_builds_no_op(tmp_path, aws_env):
    _upload(aws_env, _gpu_bundle(tmp_path))
    box = _node(tmp_path)
    env = (box.root / "etc/stratus/stack.env").read_text()
    assert "STRATUS_BUILD_OPS=1" in env  # the trainer's; the serving host's user data does not set it
    (box.root / "etc/stratus/stack.env").write_text(env.replace("STRATUS_BUILD_OPS=1\n", ""))
    result = box.run(PREPARE, _aws(aws_env), stack_env=True)
    assert result.returncode == 0, result.stderr
    assert not (box.root / HOST_TORCH_EXTENSIONS.lstrip("/")).exists() and box.calls("nvidia-smi") == []
    assert box.calls("dnf") == ["install -y -q python3.11 python3.11-pip"]  # no compiler either
    serving = userdata.serving_user_data(region="r", models_bucket="m", model_name="x", port=8000, token_parameter="/t")
    assert "STRATUS_BUILD_OPS" not in serving.split("/etc/stratus/stack.env")[1].split("STRATUS_EOF")[1]
