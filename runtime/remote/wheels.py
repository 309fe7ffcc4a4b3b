"""`stratus wheels`: build the wheelhouse a stack without egress installs the runtime from.

Runbook:
    # GPU nodes (the default): the CUDA torch (PyPI's Linux wheel), onnxruntime-genai-cuda, and a
    # wheel built here from DeepSpeed's source distribution; several GB, from this machine's network
    stratus wheels --dest wheels/
    scripts/launch.sh --stack dev --wheels wheels/          # uploaded once (by sha256); nodes install offline
    # CPU-only nodes (the simulated stack, CPU types): torch's CPU build from download.pytorch.org
    stratus wheels --dest wheels-cpu/ --cpu
    # print the pip commands, run nothing
    stratus wheels --dest wheels/ --dry-run

The nodes run Python 3.11 on x86_64 Linux (glibc 2.34 on Amazon Linux 2023, 2.35 on Ubuntu 22.04):
pip downloads for that interpreter and those platforms, whatever this machine is
(`--python-version`, `--implementation cp`, `--abi`, several `--platform` tags, binary wheels
only). Several platform tags because pip does not widen a `manylinux_2_28` tag to older glibc
versions, and packages such as grpcio publish only `manylinux2014` (glibc 2.17) wheels.
DeepSpeed is published as a source distribution only: `pip wheel --no-deps` builds a pure-Python
wheel from it with `DS_BUILD_OPS=0` (no op is compiled here; the nodes compile the ones they use
when they prepare, `runtime.remote.ops`), and the download then finds it with `--find-links`.
Every pin of the requirements file must end up as a wheel in `--dest`; the command says which did not.

Exit codes: 0 the wheelhouse holds a wheel for every pin; 1 pip failed (the message names the
package when pip did); 2 bad arguments or requirements file.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from runtime.common.log import get_logger
from runtime.common.options import option, parse_options
from runtime.contract import OUTPUT_EGRESS_ENABLED, ExitCode
from runtime.remote.bundle import RUNTIME_REQUIREMENTS
from runtime.remote.outputs import RemoteError, StackOutputs

log = get_logger()
NODE_PLATFORMS = (
    "manylinux_2_34_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux2014_x86_64",
)
"""Platform tags a node's pip accepts (glibc 2.34 at least), newest first; pip widens
`manylinux2014` to manylinux2010 and manylinux1 itself, but no `manylinux_2_X` tag."""
SOURCE_ONLY = ("deepspeed",)
"""Pinned packages published without a wheel: built here from their source distribution."""
BUILD_ENV = {"deepspeed": {"DS_BUILD_OPS": "0"}}
"""Environment of each source build (DeepSpeed: no op compiled into the wheel)."""
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
"""torch's own index of its CPU-only builds (`torch==X+cpu`); PyPI's Linux wheel is the CUDA one."""
GPU_EXTRAS = {"onnxruntime-genai": "onnxruntime-genai-cuda"}
"""Pinned package -> its CUDA build of the same version, which GPU hosts install in its place."""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
_MISSING = re.compile(r"(?:No matching distribution found for|satisfies the requirement) ([A-Za-z0-9._-]+[^\s(]*)")


class WheelsError(RuntimeError):
    """Bad arguments or requirements (exit 2); the message names what to change."""


@dataclass(kw_only=True)
class WheelsOptions:
    """The options of `stratus wheels`."""

    dest: Path = option(Path("wheels"), metavar="DIR")
    """Directory the wheels are written to (created; wheels already there are kept and reused)."""

    requirements: Path = option(Path(RUNTIME_REQUIREMENTS), metavar="FILE")
    """The pins the nodes install (the bundle's requirements file)."""

    cpu: bool = False
    """Wheels for CPU-only nodes (the simulated stack, CPU instance types): torch's CPU build from
    download.pytorch.org and no onnxruntime-genai-cuda. Default: GPU nodes (PyPI's CUDA torch)."""

    python_version: str = option("3.11", metavar="X.Y")
    """Python of the nodes' runtime venv (prepare.sh installs 3.11)."""

    platform: tuple[str, ...] = option(NODE_PLATFORMS, metavar="TAG")
    """A platform tag the nodes accept (repeat the flag; default: the manylinux tags of glibc 2.34)."""

    dry_run: bool = False
    """Print the pip commands; run nothing."""

    python: str = option(sys.executable, hidden=True)
    """The interpreter whose pip runs (tests put a stand-in here)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d{1,2}", self.python_version):
            raise WheelsError(f"--python-version {self.python_version!r}: give major.minor, e.g. 3.11")
        if not self.requirements.is_file():
            raise WheelsError(
                f"--requirements {self.requirements}: no such file (the repository's is {RUNTIME_REQUIREMENTS})"
            )


@dataclass(frozen=True)
class Step:
    """One pip run: what it does (the progress line), its argv and extra environment."""

    what: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def read_pins(requirements: Path) -> dict[str, str]:
    """`{normalized name: version}` of the `name==version` lines (comments, blanks skipped).

    Raises:
        WheelsError: a requirement that is not an exact pin (the wheelhouse could not be checked).
    """
    pins = {}
    for number, raw in enumerate(requirements.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.match(line)
        if not match:
            raise WheelsError(f"{requirements}:{number}: {line!r} is not an exact pin (name==version)")
        pins[normalize(match[1])] = match[2]
    return pins


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _target(opts: WheelsOptions) -> list[str]:
    tags = [f"--platform={p}" for p in opts.platform]
    abi = "cp" + opts.python_version.replace(".", "")
    return [
        "--only-binary=:all:",
        f"--python-version={opts.python_version}",
        "--implementation=cp",
        f"--abi={abi}",
        *tags,
    ]


def pip_steps(opts: WheelsOptions) -> list[Step]:
    """The pip runs that fill `opts.dest`, in order (pure: nothing runs)."""
    pins = read_pins(opts.requirements)
    pip, dest = [opts.python, "-m", "pip"], str(opts.dest)
    steps = [
        Step(
            f"building {name}=={pins[name]} from its source distribution (pure Python; its ops compile on the nodes)",
            [*pip, "wheel", "--no-deps", "--wheel-dir", dest, f"{name}=={pins[name]}"],
            BUILD_ENV.get(name, {}),
        )
        for name in SOURCE_ONLY
        if name in pins
    ]
    if opts.cpu and "torch" in pins:
        steps.append(
            Step(
                f"downloading torch=={pins['torch']}+cpu (the CPU-only build) from {TORCH_CPU_INDEX}",
                [
                    *pip,
                    "download",
                    "--no-deps",
                    *_target(opts),
                    "--index-url",
                    TORCH_CPU_INDEX,
                    "--dest",
                    dest,
                    f"torch=={pins['torch']}+cpu",
                ],
            )
        )
    extras = [] if opts.cpu else [f"{cuda}=={pins[name]}" for name, cuda in GPU_EXTRAS.items() if name in pins]
    what = "CUDA torch from PyPI, " if "torch" in pins and not opts.cpu else ""
    steps.append(
        Step(
            f"downloading every pin and its dependencies ({what}{len(NODE_PLATFORMS)} platform tags, binary only)",
            [
                *pip,
                "download",
                *_target(opts),
                "--find-links",
                dest,
                "--dest",
                dest,
                "-r",
                str(opts.requirements),
                *extras,
            ],
        )
    )
    return steps


def _wheel_versions(dest: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for whl in dest.glob("*.whl"):
        name, version = whl.name.split("-")[:2]
        found.setdefault(normalize(name), set()).add(version.split("+")[0])
    return found


def missing_wheels(requirements: Path, dest: Path, *, gpu: bool) -> list[str]:
    """The pins (`name==version`) without a wheel of that version in `dest`; on `gpu` also the CUDA
    builds of `GPU_EXTRAS`. Only the pins are checked: pip resolved their dependencies."""
    pins = read_pins(requirements)
    if gpu:
        pins |= {normalize(cuda): pins[name] for name, cuda in GPU_EXTRAS.items() if name in pins}
    found = _wheel_versions(dest)
    return [f"{name}=={version}" for name, version in pins.items() if version.split("+")[0] not in found.get(name, ())]


def run_step(step: Step) -> None:
    """Run one pip command, its output streamed to stderr.

    Raises:
        RuntimeError: pip failed; names the package pip could not find, when it said so.
    """
    env = {**os.environ, **step.env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    tail: deque[str] = deque(maxlen=400)
    with subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(f"  | {line}")
            tail.append(line)
    if proc.returncode == 0:
        return
    names = dict.fromkeys(m[1] for line in tail for m in _MISSING.finditer(line))
    what = f"no wheel of {', '.join(names)} for the nodes" if names else "see pip's output above"
    raise RuntimeError(f"`{shlex.join(step.argv)}` failed (exit {proc.returncode}): {what}")


def build(opts: WheelsOptions) -> int:
    steps = pip_steps(opts)
    if opts.dry_run:
        for step in steps:
            env = "".join(f"{k}={shlex.quote(v)} " for k, v in step.env.items())
            print(f"# {step.what}\n{env}{shlex.join(step.argv)}")
        return ExitCode.OK
    opts.dest.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps, 1):
        log.info("step %d/%d: %s", i, len(steps), step.what)
        run_step(step)
    missing = missing_wheels(opts.requirements, opts.dest, gpu=not opts.cpu)
    if missing:
        raise RuntimeError(f"{opts.dest} has no wheel of {', '.join(missing)} after the downloads")
    wheels = sorted(opts.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    log.info("%s: %d wheels, %.0f MiB; pass it as --wheels %s", opts.dest, len(wheels), size, opts.dest)
    return ExitCode.OK


def check_install_path(out: StackOutputs, wheels: Path | None, *, gpu: bool) -> None:
    """Refuse a launch whose nodes could not install the runtime, before anything is uploaded.

    Without egress the nodes reach only the VPC endpoints (no PyPI): the launch must name a
    wheelhouse (`runtime.remote.wheelhouse`), with a wheel of every pin (and, on GPU nodes, of the
    CUDA builds prepare.sh swaps in).
    A stack that does not export `egress_enabled` (older) only gets a warning.

    Raises:
        RemoteError: no egress and no `--wheels`, or a wheelhouse that lacks a pinned package.
    """
    if wheels is None:
        if out.egress_enabled is False:
            raise RemoteError(
                f"the stack has no egress ({OUTPUT_EGRESS_ENABLED}: false): its nodes cannot reach PyPI to install the "
                "runtime. Build a wheelhouse with `stratus wheels --dest wheels/` and pass `--wheels wheels/` "
                "(scripts/launch.sh --wheels wheels/); nothing was uploaded"
            )
        if out.egress_enabled is None:
            log.warning(
                "the stack does not export %s: if its nodes have no egress they cannot install the runtime; "
                "pass --wheels DIR (built by `stratus wheels`) for such a stack",
                OUTPUT_EGRESS_ENABLED,
            )
        return
    check_wheelhouse(wheels, gpu=gpu)


def check_wheelhouse(wheels: Path, *, gpu: bool, hosts: str = "nodes") -> None:
    """Refuse a wheelhouse directory without a wheel of every pin (`missing_wheels`), before
    anything is uploaded; `hosts` names who installs from it in the message.

    Raises:
        RemoteError: names the missing pins and the command that rebuilds the wheelhouse.
    """
    if not wheels.is_dir():
        return  # read_wheelhouse names a missing directory
    missing = missing_wheels(Path(__file__).resolve().parents[2] / RUNTIME_REQUIREMENTS, wheels, gpu=gpu)
    if missing:
        kind = "" if gpu else " --cpu"
        raise RemoteError(
            f"--wheels {wheels} has no wheel of {', '.join(missing)}; the {hosts} install offline from it. "
            f"Rebuild it with `stratus wheels --dest {wheels}{kind}`; nothing was uploaded"
        )


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus wheels`; an `ExitCode`."""
    try:
        opts = parse_options(WheelsOptions, argv, prog="stratus wheels", description=__doc__)
        return build(opts)
    except WheelsError as e:
        log.error("%s", e)
        return ExitCode.BAD_INPUT
    except (RuntimeError, OSError) as e:
        log.error("%s", e)
        return ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
