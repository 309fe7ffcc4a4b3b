"""The real `prepare.sh` on a simulated host: `python -m sim.stack up DIR --real-prepare`.

By default a simulated host's `stratus-prepare.service` only unpacks the bundle
(`sim.stack.prepare`: its venv is a shim that runs this machine's interpreter). A stack made
with `--real-prepare` (`"real_prepare": true` in sim.json, `ENV_REAL_PREPARE=1` in its `env`)
runs the host script the stack's user data installs, `infra/builders/host/prepare.sh`, in its
shipped form (`infra.builders.userdata.shipped_script`), as systemd would: synchronously, as
root, inside the host's network namespace (no route out: only the bridge to the emulator) and
mount namespace (`/opt/stratus`, `/etc/stratus` are the host's own directories), with the
environment of its unit (`/etc/stratus/stack.env`) and the emulator's endpoint and credentials
(the instance profile's part). It fetches the bundle from the emulator with the AWS CLI, creates
`/opt/stratus/venv` from scratch with this machine's Python 3.11 (`/usr/bin/python3.11` first on
its `PATH`, as on Amazon Linux 2023), installs `requirements/runtime.txt` with `pip --no-index`
from the wheelhouse the bundle's `wheels.json` names (so a stack made with `--real-prepare` needs
`launch.sh --wheels W`) and, on training nodes, builds DeepSpeed's ops once
(`STRATUS_BUILD_OPS=1`); a relaunch with the same requirements and wheelhouse downloads no wheel
and installs nothing.

A training node of the simulated stack is never booted from user data, so on its first prepare
the node gets what `infra.builders.userdata.trainer_user_data` writes for prepare: the script at
`/opt/stratus/prepare.sh` and `/etc/stratus/stack.env` (region, bundle URI, `STRATUS_BUILD_OPS=1`).
A host whose user data wrote them (a serving host, `sim.serve`) keeps its own. Either way
`STRATUS_GPU=0` (a simulated host is a CPU host), and pip sees no configuration of this machine
(`PIP_CONFIG_FILE=/dev/null`, no `PIP_*` variables, no cache): the node's install cannot borrow
this machine's wheel mirrors. The output goes to stderr and to `/opt/stratus/prepare.log` (on this
machine `<dir>/<host>/opt-stratus/prepare.log`), each run headed by a timestamp.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runtime.contract import APP_DIR, ENV_BUNDLE_URI
from sim import instance_store

ENV_REAL_PREPARE = "STRATUS_SIM_REAL_PREPARE"
"""In the simulated stack's `env` (sim.json) when it was made with `--real-prepare`."""
STACK_ENV = "/etc/stratus/stack.env"
PREPARE_SCRIPT = f"{APP_DIR}/prepare.sh"
PREPARE_LOG = f"{APP_DIR}/prepare.log"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def enabled(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether the simulated host's prepare unit runs the real `prepare.sh` (see the module docstring)."""
    return env.get(ENV_REAL_PREPARE) == "1"


def aws_cli() -> Path:
    """This machine's AWS CLI (prepare.sh fetches the bundle with `aws s3 cp`).

    Raises:
        RuntimeError: none found; the message says how to get one.
    """
    candidates = [
        shutil.which("aws"),
        Path(sys.prefix) / "bin" / "aws",  # the development requirements' awscli, in this virtualenv
        Path(sys.base_prefix) / "bin" / "aws",
        "/usr/local/bin/aws",
        "/usr/bin/aws",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise RuntimeError(
        "the real prepare.sh fetches the bundle with the AWS CLI and this machine has none on PATH or in "
        f"{Path(sys.prefix) / 'bin'}: install the development requirements (`scripts/test.sh` does; they pin "
        "awscli) or make the simulated stack without --real-prepare"
    )


def trainer_stack_env(env: dict[str, str]) -> dict[str, str]:
    """What the training node's user data writes to `/etc/stratus/stack.env` for its prepare unit,
    for a simulated (CPU) node: region, bundle URI, no GPU, DeepSpeed's ops built at prepare, the
    instance-store scratch."""
    return {
        "AWS_REGION": env["AWS_DEFAULT_REGION"],
        ENV_BUNDLE_URI: env[ENV_BUNDLE_URI],
        "STRATUS_GPU": "0",
        "STRATUS_BUILD_OPS": "1",
        "STRATUS_SCRATCH": "nvme",  # the node's instance store (sim.instance_store), on /scratch at boot
        "STRATUS_NVME_DISKS": str(instance_store.DISKS),
    }


def install_user_data_part(etc: Path, app: Path, env: dict[str, str]) -> None:
    """Write `stack.env` under `etc` and the shipped `prepare.sh` under `app`, unless present."""
    from infra.builders.userdata import shipped_script

    stack_env = etc / Path(STACK_ENV).name
    if not stack_env.is_file():
        etc.mkdir(parents=True, exist_ok=True)
        stack_env.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in trainer_stack_env(env).items()))
    script = app / Path(PREPARE_SCRIPT).name
    if not script.is_file():
        app.mkdir(parents=True, exist_ok=True)
        script.write_text(shipped_script("prepare.sh"))
        script.chmod(0o755)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines of an EnvironmentFile (shell-quoted values, comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words and "=" in words[0]:
            key, value = words[0].split("=", 1)
            found[key] = value
    return found


def unit_env(env: dict[str, str], stack_env: Path, aws: Path) -> dict[str, str]:
    """The environment prepare.sh runs with: the unit's EnvironmentFile, the emulator's endpoint and
    credentials from `env`, a system PATH (the AWS CLI's directory last), no pip configuration."""
    unit = {
        "PATH": f"{SYSTEM_PATH}:{aws.parent}",
        "LANG": env.get("LANG", "C.UTF-8"),
        **{k: v for k, v in env.items() if k.startswith("AWS_")},
        **read_env_file(stack_env),
        "STRATUS_GPU": "0",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return unit


def run(*, etc: Path = Path(STACK_ENV).parent, app: Path = Path(APP_DIR), env: dict[str, str] | None = None) -> int:
    """Run the real prepare.sh on this simulated host (see the module docstring); its exit status.

    `etc` and `app` are `/etc/stratus` and `/opt/stratus` (inside the host's mount namespace).
    """
    env = dict(os.environ if env is None else env)
    install_user_data_part(etc, app, env)
    unit = unit_env(env, etc / Path(STACK_ENV).name, aws_cli())
    log_path = app / Path(PREPARE_LOG).name
    start = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} stratus-prepare.service: {app / 'prepare.sh'}\n")
        log.flush()
        proc = subprocess.Popen(
            ["bash", str(app / Path(PREPARE_SCRIPT).name)],
            env=unit,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stderr.write(line)
        code = proc.wait()
        took = time.monotonic() - start
        summary = f"[simulated systemd] stratus-prepare.service (real prepare.sh): exit {code} after {took:.1f} s\n"
        log.write(summary)
    sys.stderr.write(summary)
    return code
