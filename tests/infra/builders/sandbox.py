"""A sandbox that runs the hosts' user data and scripts for real, under bash.

Everything the scripts write lands under a sysroot (`STRATUS_SYSROOT`); PATH holds only a
directory of links to ordinary tools plus recording stand-ins for what would change the machine
(the package managers, systemctl, mdadm, mkfs.xfs, mount) or needs an instance (IMDS via curl).
`aws s3 cp` is a small boto3 client that talks to the moto server, and `python3` is a Python 3.9
stand-in until `dnf install python3.11` links the real 3.11 interpreter in.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runtime.contract import WHEELS_MANIFEST
from runtime.remote.bundle import BundleEntry, write_tar
from runtime.remote.wheelhouse import read_wheelhouse, write_wheelhouse

ROOT = Path(__file__).resolve().parents[3]

TOOLS = (
    "bash",
    "sh",
    "env",
    "cat",
    "mkdir",
    "rm",
    "mv",
    "tar",
    "gzip",
    "sed",
    "grep",
    "ls",
    "install",
    "chmod",
    "touch",
    "dirname",
    "basename",
    "readlink",
    "seq",
    "printf",
    "head",
    "tr",
    "sort",
    "cut",
    "test",
    "true",
    "false",
    "ln",
    "cp",
    "find",
    "xargs",
    "wc",
    "mktemp",
    "uname",
    "expr",
    "sha256sum",
)
RECORDED = ("systemctl", "dnf", "apt-get", "mdadm", "mkfs.xfs", "mount", "useradd", "curl", "sleep", "nvidia-smi")
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))

TORCH_INIT = """\
__version__ = {version!r}


class version:
    cuda = {cuda!r}


class cuda:
    @staticmethod
    def is_available():
        return {gpu!r}

    @staticmethod
    def device_count():
        return 8
"""


class Sandbox:
    """A sysroot, a bin directory and a log of the stand-ins' calls."""

    def __init__(self, base: Path):
        self.root, self.bin, self.log = base / "root", base / "bin", base / "calls.log"
        self.root.mkdir(parents=True)
        self.bin.mkdir()
        self.log.touch()
        for tool in TOOLS:
            found = shutil.which(tool)
            if found:
                (self.bin / tool).symlink_to(found)
        for tool in RECORDED:
            self.stand_in(tool)
        # dnf "installs" python3.11 by linking the real interpreter in, and gcc-c++ as a compiler
        # that is there (the real one: DeepSpeed's stand-in only looks for it).
        self.stand_in(
            "dnf",
            f'case " $* " in *" python3.11 "*) ln -sf {BASE_PYTHON} "$(dirname "$0")/python3.11";; esac\n'
            f'case " $* " in *" gcc-c++ "*) ln -sf {shutil.which("c++") or "/bin/true"} "$(dirname "$0")/c++";; esac',
        )
        self.stand_in("python3", "exit 1  # Python 3.9: fails the 3.11 check")
        # blkid: nothing formatted yet; mountpoint: nothing mounted yet.
        self.stand_in("blkid", "exit 2")
        self.stand_in("mountpoint", "exit 1")
        self.stand_in("aws", f'exec {sys.executable} -c "{AWS_S3_CP}" "$@"')

    def stand_in(self, name: str, body: str = "") -> None:
        """A script `name` that records its arguments, then runs `body`."""
        path = self.bin / name
        path.unlink(missing_ok=True)
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "{self.log}"\n{body}\n')
        path.chmod(0o755)

    def ami_framework_python(self, wheel: Path) -> Path:
        """A Deep Learning AMI's framework env at /opt/pytorch (a real Python 3.11 venv) holding
        the torch of `wheel`, as the PyTorch DLAMIs ship it."""
        env = self.root / "opt/pytorch"
        subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(env)], check=True)
        (site,) = env.glob("lib/python3.*/site-packages")
        with zipfile.ZipFile(wheel) as whl:
            whl.extractall(site)  # noqa: S202 (a wheel this test just wrote)
        return site

    def calls(self, name: str) -> list[str]:
        """The argument lines of every call of the stand-in `name`."""
        prefix = f"{name} "
        return [line[len(prefix) :] for line in self.log.read_text().splitlines() if line.startswith(prefix)]

    def run(self, script: str, env: dict[str, str] | None = None, stack_env: bool = False):
        """Run `script` (bash source) with the sandbox's PATH and sysroot; `stack_env` first
        exports the /etc/stratus/stack.env that the user data wrote (as systemd would)."""
        prelude = 'set -a; . "$STRATUS_SYSROOT/etc/stratus/stack.env"; set +a\n' if stack_env else ""
        full_env = {**(env or {}), "PATH": str(self.bin), "STRATUS_SYSROOT": str(self.root), "HOME": str(self.root)}
        return subprocess.run(
            ["bash", "-c", prelude + script], env=full_env, capture_output=True, text=True, timeout=120
        )


AWS_S3_CP = (
    "import sys, boto3; a = sys.argv[1:]; assert a[:2] == ['s3', 'cp'], a; "
    "src, dest = [x for x in a[2:] if not x.startswith('--') and x != a[a.index('--region') + 1]]; "
    "bucket, key = src[5:].split('/', 1); "
    "boto3.client('s3', region_name=a[a.index('--region') + 1]).download_file(bucket, key, dest)"
)


def fake_wheel(dest: Path, version: str, cuda: str | None, gpu: bool = True, tag: str = "cp311") -> Path:
    """A tiny `torch` wheel with the given version/CUDA build: stands in for the real one on a host
    without a GPU, so the bootstrap's checks run against what it reports."""
    name = f"torch-{version}"
    path = dest / f"{name}-{tag}-{tag}-linux_x86_64.whl"
    info = f"{name}.dist-info"
    files = {
        "torch/__init__.py": TORCH_INIT.format(version=version, cuda=cuda, gpu=gpu),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stratus-tests\nRoot-Is-Purelib: false\n"
        f"Tag: {tag}-{tag}-linux_x86_64\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as whl:
        for n, text in files.items():
            whl.writestr(n, text)
    return path


def fake_package_wheel(dest: Path, name: str, version: str, module: str) -> Path:
    """A tiny pure wheel of distribution `name`, whose module `module` records which one it is."""
    dist = name.replace("-", "_")
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"DISTRIBUTION = {name!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: stratus-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as whl:
        for n, text in files.items():
            whl.writestr(n, text)
    return path


DEEPSPEED_ACCELERATOR = """\
import os
import pathlib
import shutil


class _Builder:
    def __init__(self, name):
        self.name = name

    def load(self, verbose=True):
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            raise RuntimeError("Error building extension: c++: command not found")
        built = pathlib.Path(os.environ["TORCH_EXTENSIONS_DIR"]) / self.name
        built.mkdir(parents=True, exist_ok=True)
        (built / "built-with").write_text(os.environ.get("CUDA_HOME", "") + "|" + os.environ["DS_ACCELERATOR"])


class _Accelerator:
    def device_name(self):
        return os.environ["DS_ACCELERATOR"]

    def create_op_builder(self, name):
        return _Builder(name)


def get_accelerator():
    return _Accelerator()
"""


def fake_deepspeed_wheel(dest: Path, version: str = "0.19.8") -> Path:
    """A `deepspeed` wheel whose op builders "build" into TORCH_EXTENSIONS_DIR/<name> when a C++
    compiler is on PATH (and fail as a real build does without one)."""
    path = fake_package_wheel(dest, "deepspeed", version, "deepspeed")
    with zipfile.ZipFile(path, "a") as whl:
        whl.writestr("deepspeed/accelerator/__init__.py", DEEPSPEED_ACCELERATOR)
    return path


RUNTIME_OPS = ("runtime/remote/__init__.py", "runtime/remote/ops.py")
"""The runtime modules prepare.sh runs (its ops build), copied into test bundles from this checkout."""


@dataclass(frozen=True)
class HostBundle:
    """A runtime bundle and the wheelhouse tar its `wheels.json` names, as `stratus remote` uploads them."""

    bundle: bytes
    wheelhouse: bytes | None
    """The tar at `wheelhouse_key`, or None for a bundle without wheels."""
    wheelhouse_key: str | None
    wheelhouse_uri: str | None


def bundle_bytes(
    wheel: Path | None,
    requirements: str = "torch==2.13.0\n",
    extra_wheels: tuple[Path, ...] = (),
    models_bucket: str = "stratus-models",
) -> HostBundle:
    """A runtime bundle (requirements, runtime/, the manifest `wheels.json`) and its wheelhouse, both
    made by the launcher's own code (`runtime.remote.wheelhouse`, `runtime.remote.bundle.write_tar`)."""
    wheels = [*extra_wheels, *([wheel] if wheel is not None else [])]
    members = {"requirements/runtime.txt": requirements.encode(), "runtime/__init__.py": b""}
    members |= {name: (ROOT / name).read_bytes() for name in RUNTIME_OPS}
    house = tar = None
    if wheels:
        with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
            for whl in wheels:
                shutil.copy(whl, tmp)
            house = read_wheelhouse(Path(tmp))
            write_wheelhouse(house, Path(tmp) / "house.tar")
            tar = (Path(tmp) / "house.tar").read_bytes()
        members[WHEELS_MANIFEST] = house.manifest(models_bucket)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as gz:
        write_tar([BundleEntry(name, data, len(data)) for name, data in members.items()], gz)
    return HostBundle(out.getvalue(), tar, house and house.key, house and house.uri(models_bucket))
