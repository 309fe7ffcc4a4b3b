"""`stratus wheels` (the wheelhouse of a stack without egress) and the launcher's install-path checks.

The pip command lines are checked as built; one real run downloads two small pinned packages for
the nodes' platform (from this machine's package index); pip's failures come from a stand-in
interpreter that prints what pip prints. `scripts/launch.sh --wheels` runs for real with a stand-in
venv whose `python` records the `stratus remote` command line it was given.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import boto3

from runtime.contract import WHEELS_MANIFEST, ExitCode, wheelhouse_key
from runtime.remote import wheels
from runtime.remote.bundle import RUNTIME_REQUIREMENTS
from runtime.remote.wheelhouse import read_wheelhouse
from runtime.remote.wheels import WheelsOptions, missing_wheels, pip_steps, read_pins
from tests.infra.builders.sandbox import fake_package_wheel
from tests.runtime.remote.test_launch import run_remote

ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = ROOT / RUNTIME_REQUIREMENTS


def _target_flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith(("--platform=", "--python-version=", "--abi=", "--implementation="))]


def test_gpu_wheelhouse_builds_deepspeed_from_source_then_downloads_every_pin_for_the_nodes(tmp_path):
    pins = read_pins(REQUIREMENTS)
    opts = WheelsOptions(dest=tmp_path / "w", requirements=REQUIREMENTS, python="py")
    build, download = pip_steps(opts)
    assert build.argv == ["py", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path / "w"),
                          f"deepspeed=={pins['deepspeed']}"]  # fmt: skip
    assert build.env == {"DS_BUILD_OPS": "0"}  # pure Python: its ops compile on the nodes
    assert download.argv[:4] == ["py", "-m", "pip", "download"] and "--only-binary=:all:" in download.argv
    # grpcio publishes only manylinux2014 wheels; torch manylinux_2_28: both tags, and no index change
    assert _target_flags(download.argv) == [
        "--python-version=3.11",
        "--implementation=cp",
        "--abi=cp311",
        "--platform=manylinux_2_34_x86_64",
        "--platform=manylinux_2_28_x86_64",
        "--platform=manylinux_2_27_x86_64",
        "--platform=manylinux_2_24_x86_64",
        "--platform=manylinux2014_x86_64",
    ]
    i = download.argv.index("--find-links")
    assert download.argv[i : i + 6] == [
        "--find-links",
        str(opts.dest),
        "--dest",
        str(opts.dest),
        "-r",
        str(REQUIREMENTS),
    ]
    assert download.argv[-1] == f"onnxruntime-genai-cuda=={pins['onnxruntime-genai']}"
    assert "--index-url" not in download.argv  # PyPI's Linux torch wheel is the CUDA build


def test_cpu_wheelhouse_takes_torch_from_its_cpu_index_and_no_cuda_build(tmp_path):
    pins = read_pins(REQUIREMENTS)
    opts = WheelsOptions(dest=tmp_path, requirements=REQUIREMENTS, cpu=True, python="py")
    build, torch_cpu, download = pip_steps(opts)
    assert build.argv[-1].startswith("deepspeed==")
    assert torch_cpu.argv[-1] == f"torch=={pins['torch']}+cpu" and "--no-deps" in torch_cpu.argv
    assert torch_cpu.argv[torch_cpu.argv.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert _target_flags(torch_cpu.argv) == _target_flags(download.argv)
    assert not any("onnxruntime-genai-cuda" in a for a in download.argv)


def test_dry_run_prints_the_commands_and_bad_requirements_exit_2(tmp_path, capsys, caplog):
    assert wheels.main(["--dest", str(tmp_path / "w"), "--dry-run"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "DS_BUILD_OPS=0 " in out and "pip wheel --no-deps" in out and "--platform=manylinux2014_x86_64" in out
    assert not (tmp_path / "w").exists()
    loose = tmp_path / "loose.txt"
    loose.write_text("torch>=2\n")
    assert wheels.main(["--requirements", str(loose), "--dry-run"]) == ExitCode.BAD_INPUT
    assert "loose.txt:1: 'torch>=2' is not an exact pin" in caplog.text
    assert wheels.main(["--requirements", str(tmp_path / "none.txt")]) == ExitCode.BAD_INPUT


def test_a_real_run_downloads_linux_cp311_wheels_for_the_pins(tmp_path):
    # two small packages with compiled wheels: pyyaml (manylinux_2_28 and 2014), grpcio-free so it is quick
    req = tmp_path / "req.txt"
    req.write_text("pyyaml==6.0.3\nsix==1.17.0\n")
    dest = tmp_path / "wheels"
    assert wheels.main(["--requirements", str(req), "--dest", str(dest), "--cpu"]) == ExitCode.OK
    names = sorted(p.name for p in dest.glob("*.whl"))
    assert len(names) == 2 and names[1].startswith("six-1.17.0-py2.py3-none-any"), names
    assert names[0].startswith("pyyaml-6.0.3-cp311-cp311-") and "manylinux" in names[0], names
    assert missing_wheels(req, dest, gpu=False) == []


def test_a_pin_pip_cannot_find_is_named(tmp_path, caplog):
    fake = tmp_path / "python"  # pip's own words for a package without a wheel for the platform
    fake.write_text(
        "#!/bin/sh\necho 'ERROR: Could not find a version that satisfies the requirement grpcio==1.85.3 "
        "(from versions: none)'\necho 'ERROR: No matching distribution found for grpcio==1.85.3'\nexit 1\n"
    )
    fake.chmod(0o755)
    req = tmp_path / "req.txt"
    req.write_text("grpcio==1.85.3\n")
    code = wheels.main(["--requirements", str(req), "--dest", str(tmp_path / "w"), "--python", str(fake)])
    assert code == ExitCode.FAILED
    assert "no wheel of grpcio==1.85.3 for the nodes" in caplog.text


def test_missing_wheels_names_the_pins_and_the_cuda_builds(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("torch==2.13.0\nonnxruntime-genai==0.18.0\npyyaml==6.0.3\n")
    fake_package_wheel(tmp_path, "onnxruntime-genai", "0.18.0", "og")
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert missing_wheels(req, tmp_path, gpu=False) == ["pyyaml==6.0.3"]
    assert missing_wheels(req, tmp_path, gpu=True) == ["pyyaml==6.0.3", "onnxruntime-genai-cuda==0.18.0"]


def wheelhouse_of_pins(dest: Path) -> Path:
    """Stand-in wheels (right names and versions) for every pin of the repository's requirements."""
    dest.mkdir()
    pins = read_pins(REQUIREMENTS)
    pins["onnxruntime-genai-cuda"] = pins["onnxruntime-genai"]
    for name, version in pins.items():
        fake_package_wheel(dest, name, version, name.replace("-", "_"))
    return dest


def test_a_stack_without_egress_needs_wheels_and_nothing_is_uploaded_without_them(stack, aws_env, tmp_path):
    outputs, path = stack
    path.write_text(json.dumps({**outputs, "egress_enabled": False}))
    args = ("--outputs-file", str(path), "--", "--set", "max_steps=2", "--run-name", "noegress")
    result = run_remote(aws_env, *args)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert "has no egress (egress_enabled: false)" in result.stdout and "stratus wheels --dest wheels/" in result.stdout
    s3 = boto3.client("s3", region_name="us-east-1")
    assert s3.list_objects_v2(Bucket=outputs["models_bucket"]).get("KeyCount", 0) == 0
    # a wheelhouse without one of the pins: refused too, naming it
    house = wheelhouse_of_pins(tmp_path / "wheels")
    next(house.glob("grpcio-*.whl")).unlink()
    result = run_remote(aws_env, "--wheels", str(house), *args)
    assert result.returncode == ExitCode.BAD_INPUT and "has no wheel of grpcio==" in result.stdout, result.stdout
    # a complete one: planned as its own object, which the bundle's manifest names
    fake_package_wheel(house, "grpcio", read_pins(REQUIREMENTS)["grpcio"], "grpc")
    result = run_remote(aws_env, "--wheels", str(house), "--dry-run", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("  wheelhouse   ")]
    sha = read_wheelhouse(house).sha256
    assert line.split()[1] == f"s3://{outputs['models_bucket']}/{wheelhouse_key(sha)}"
    assert line.endswith("; would be uploaded)") and f"({len(list(house.glob('*.whl')))} wheels, " in line
    assert f"  {WHEELS_MANIFEST}\n" in result.stdout and ".whl" not in result.stdout.split("S3 keys:")[0]
    assert s3.list_objects_v2(Bucket=outputs["models_bucket"]).get("KeyCount", 0) == 0


def test_a_stack_that_does_not_say_only_warns(stack, aws_env):
    _, path = stack  # the fixture's outputs have no egress_enabled (an older stack)
    result = run_remote(aws_env, "--outputs-file", str(path), "--dry-run", "--", "--run-name", "older")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not export egress_enabled" in result.stdout and "--wheels DIR" in result.stdout


def test_launch_sh_passes_wheels_to_stratus_remote(tmp_path):
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "launch.sh", root / "scripts" / "launch.sh")
    # the venv set-up stand-in: `python` records the command line launch.sh hands over
    (root / "scripts" / "_venv.sh").write_text(
        f'STRATUS_ROOT="{root}"\nexport PATH="{root}/bin:$PATH"\n'
    )  # fmt: skip
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\n')
    (root / "bin" / "python").chmod(0o755)
    (tmp_path / "w").mkdir()
    launch = [str(root / "scripts" / "launch.sh")]
    result = subprocess.run([*launch, "--stack", "dev", "--wheels", "w"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:5] == ["-m", "stratus", "remote", "--stack", "dev"]
    i = argv.index("--wheels")
    assert argv[i + 1] == str(tmp_path / "w")  # made absolute before launch.sh changes directory
    assert argv.index("--") > i
    result = subprocess.run([*launch, "--wheels", "w"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "add --stack NAME or --sim-dir DIR" in result.stderr


def test_the_cli_lists_wheels_and_its_help_explains_the_platforms():
    listed = subprocess.run([sys.executable, "-m", "stratus", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and "  wheels   build the wheelhouse of a stack without egress" in listed.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "stratus", "wheels", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert helped.returncode == 0, helped.stderr
    assert "grpcio publish only `manylinux2014`" in helped.stdout and "DS_BUILD_OPS=0" in helped.stdout
    assert "--cpu" in helped.stdout and "Exit codes: 0" in helped.stdout
