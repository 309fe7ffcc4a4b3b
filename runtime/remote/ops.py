"""Build DeepSpeed's ops on a node when it prepares, not mid-training: `python -m runtime.remote.ops`.

Run by `stratus-prepare.service` (`infra/builders/host/prepare.sh`) with the runtime venv, after
the install, in the bundle's directory:

    TORCH_EXTENSIONS_DIR=/opt/stratus/torch-extensions DS_ACCELERATOR=cuda \\
        /opt/stratus/venv/bin/python -m runtime.remote.ops --gpu --env-file /opt/stratus/ops.env

DeepSpeed compiles its C++/CUDA ops the first time a run builds one (torch's JIT extension
loader, into `TORCH_EXTENSIONS_DIR`); a node without `Python.h` or a compiler would crash when the
optimizer is built. This builds the ones the presets use (every node: `CPUAdamBuilder`, the Adam
of optimizer offload; GPU nodes also `FusedAdamBuilder`, the Adam without offload;
CPU-only nodes `ShareMemCommBuilder`, the collectives of DeepSpeed's CPU accelerator) and imports
each once. The training run finds them built in the same `TORCH_EXTENSIONS_DIR` (the node script
exports it, and `CUDA_HOME` from `--env-file`, so torch's build hash matches and nothing rebuilds).

On GPU nodes it first checks the CUDA versions: the driver's (`nvidia-smi`, "CUDA Version") must
cover the CUDA that torch was built for (same major version; an older minor only warns, CUDA's
minor-version compatibility), and the toolkit that compiles the CUDA ops (`nvcc`, preferably the
Deep Learning AMI's `/usr/local/cuda-<torch's version>`) must have torch's major version.

Exit codes: 0 every op built and imported; 78 (EX_CONFIG: systemd does not retry) a missing
compiler, header, toolkit or a CUDA mismatch, named in the message; 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

EX_CONFIG = 78
CPU_OPS = ("CPUAdamBuilder",)
"""Ops every node builds: DeepSpeedCPUAdam (ZeRO optimizer offload)."""
CPU_NODE_OPS = (*CPU_OPS, "ShareMemCommBuilder")
"""Ops CPU-only nodes build: also the shared-memory collectives DeepSpeed's CPU accelerator loads
when the ranks start (`deepspeed.comm`), which would otherwise compile in the first run."""
GPU_OPS = ("FusedAdamBuilder", *CPU_OPS)
"""Ops GPU nodes build: FusedAdam (Adam on the GPU without offload), then the CPU ones."""


class OpsError(RuntimeError):
    """A missing piece (compiler, header, toolkit) or a version mismatch: not retried (exit 78)."""


def say(message: str) -> None:
    print(f"[stratus-prepare] {message}", file=sys.stderr, flush=True)


def _version(text: str, pattern: str) -> tuple[int, int] | None:
    match = re.search(pattern, text)
    return (int(match[1]), int(match[2])) if match else None


def _fmt(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def check_driver(torch_cuda: tuple[int, int], smi_output: str) -> str | None:
    """None if the driver's CUDA version (from `nvidia-smi`'s banner) runs torch's CUDA, else why not.

    Raises:
        OpsError: the driver's CUDA major version is older than torch's, or nvidia-smi said none.
    """
    driver = _version(smi_output, r"CUDA Version:\s*(\d+)\.(\d+)")
    if driver is None:
        raise OpsError(
            "nvidia-smi reports no CUDA version: the NVIDIA driver is not loaded (use a GPU Deep Learning AMI)"
        )
    if driver[0] < torch_cuda[0]:
        raise OpsError(
            f"the NVIDIA driver supports CUDA {_fmt(driver)} but torch was built for CUDA {_fmt(torch_cuda)}: "
            "use an AMI with a newer driver (`trainer-ami`) or pin a torch built for this CUDA"
        )
    if driver < torch_cuda:
        return (
            f"the driver's CUDA {_fmt(driver)} is older than torch's {_fmt(torch_cuda)} (minor-version compatibility)"
        )
    return None


def cuda_home(torch_cuda: tuple[int, int], cuda_root: Path) -> Path | None:
    """The toolkit for torch's CUDA: `<root>/cuda-X.Y` of torch's version (the DLAMIs install several),
    else `$CUDA_HOME`, else `<root>/cuda`; None when none has an nvcc."""
    candidates = [cuda_root / f"cuda-{_fmt(torch_cuda)}"]
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    candidates.append(cuda_root / "cuda")
    return next((c for c in candidates if (c / "bin" / "nvcc").is_file()), None)


def check_toolkit(torch_cuda: tuple[int, int], home: Path | None) -> str | None:
    """None if `home`'s nvcc can compile CUDA ops for torch's CUDA, else a warning (minor differs).

    Raises:
        OpsError: no toolkit, or its CUDA major version is not torch's (torch refuses to build then).
    """
    if home is None:
        raise OpsError(
            f"no CUDA toolkit (nvcc) for torch's CUDA {_fmt(torch_cuda)}: FusedAdam compiles with it; use a GPU Deep "
            "Learning AMI (it ships /usr/local/cuda-X.Y) or set CUDA_HOME"
        )
    out = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    toolkit = _version(out, r"release (\d+)\.(\d+)")
    if toolkit is None:
        raise OpsError(f"{home}/bin/nvcc --version printed no release: a broken CUDA toolkit at {home}")
    if toolkit[0] != torch_cuda[0]:
        raise OpsError(
            f"the CUDA toolkit at {home} is {_fmt(toolkit)} but torch was built for CUDA {_fmt(torch_cuda)}: "
            f"install cuda-{_fmt(torch_cuda)} or set CUDA_HOME to a toolkit of CUDA {torch_cuda[0]}.x"
        )
    if toolkit != torch_cuda:
        return (
            f"the CUDA toolkit {_fmt(toolkit)} at {home} differs from torch's {_fmt(torch_cuda)} in its minor version"
        )
    return None


def check_build_tools() -> None:
    """Raises OpsError naming what a C++ extension build lacks: a compiler or `Python.h`."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise OpsError(f"no C++ compiler ({compiler}) to build DeepSpeed's ops: install gcc-c++ (dnf) or g++ (apt)")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        raise OpsError(
            f"no Python.h in {include} to build DeepSpeed's ops: install python3.11-devel (dnf) or python3.11-dev (apt)"
        )


def build_ops(names: tuple[str, ...]) -> None:
    """Build (or find built) and import each op builder of `names` for DeepSpeed's accelerator.

    Raises:
        OpsError: an op the accelerator lacks, or a build that failed (the compiler's words).
    """
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    where = os.environ.get("TORCH_EXTENSIONS_DIR", "torch's default cache")
    for name in names:
        builder = accelerator.create_op_builder(name)
        if builder is None:
            raise OpsError(f"DeepSpeed's {accelerator.device_name()} accelerator has no {name}")
        start = time.monotonic()
        try:
            builder.load(verbose=False)
        except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as e:
            raise OpsError(f"building DeepSpeed's {name} failed: {str(e).strip()[-1500:]}") from None
        say(f"DeepSpeed op {name} built and imported in {time.monotonic() - start:.1f} s ({where})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.remote.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="a GPU node: check CUDA, build the GPU ops too")
    parser.add_argument("--env-file", type=Path, help="write CUDA_HOME and TORCH_EXTENSIONS_DIR here for the runs")
    parser.add_argument("--cuda-root", type=Path, default=Path("/usr/local"), help="where the CUDA toolkits are")
    args = parser.parse_args(argv)
    env: dict[str, str] = {}
    try:
        check_build_tools()
        if args.gpu:
            import torch

            torch_cuda = _version(torch.version.cuda or "", r"(\d+)\.(\d+)")
            if torch_cuda is None:
                raise OpsError(f"torch {torch.__version__} is a CPU-only build on a GPU node")
            try:
                smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
            except FileNotFoundError:
                raise OpsError(
                    "no nvidia-smi: the NVIDIA driver is not installed (use a GPU Deep Learning AMI)"
                ) from None
            home = cuda_home(torch_cuda, args.cuda_root)
            for warning in (check_driver(torch_cuda, smi), check_toolkit(torch_cuda, home)):
                if warning:
                    say(f"warning: {warning}")
            os.environ["CUDA_HOME"] = env["CUDA_HOME"] = str(home)
            say(f"CUDA: torch {_fmt(torch_cuda)}, toolkit {home}")
        if os.environ.get("TORCH_EXTENSIONS_DIR"):
            env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
        build_ops(GPU_OPS if args.gpu else CPU_NODE_OPS)
    except OpsError as e:
        say(f"FATAL: {e}")
        return EX_CONFIG
    if args.env_file:
        args.env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
