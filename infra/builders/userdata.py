"""User data (cloud-init shell scripts) for training nodes and the serving host.

Pure functions of names only: no secret ever enters user data (it is readable by anyone with
`ec2:DescribeInstanceAttribute`). The serving token is fetched from SSM by the server at start.

The user data writes configuration (`/etc/stratus/*.env`), the host scripts of `host/`
(`prepare.sh`, `scratch.sh`; static bash, shellchecked and executed by the tests) and systemd
units, then starts the units without blocking boot:

- `stratus-scratch.service` (training nodes, every boot): /scratch on the type's local NVMe disks
  (a bind mount of the Deep Learning AMI's `dlami-nvme` volume at /opt/dlami/nvme when it set one
  up, else RAID0 across them) or on the gp3 scratch volume; `PREPARE_UNIT` `Requires=` it.
- `PREPARE_UNIT` (`stratus-prepare.service`): fetches the runtime bundle from
  `runtime.contract.bundle_uri(models_bucket)` through the S3 endpoint, picks or installs
  Python 3.11 (see `host/prepare.sh` for each AMI family), installs `requirements/runtime.txt`
  (offline from the bundle's `wheels/` when present) and, on GPU hosts, fails loudly unless torch
  is the CUDA build of the pinned version. Retries until the bundle exists.
- `SERVE_UNIT` (serving host): the inference server.

`STRATUS_SYSROOT` prefixes every path the scripts write, so tests run them in a sandbox.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from infra.config.catalog import InstanceType
from runtime.contract import (
    APP_DIR,
    ENV_BUNDLE_URI,
    HOST_PYTHON,
    NODE_ENV_FILE,
    PREPARE_UNIT,
    SCRATCH_MOUNT,
    bundle_uri,
    model_repository_uri,
)

SCRATCH_DEVICE = "/dev/sdf"
"""Device name of a training node's EBS scratch volume in the launch template."""
SERVE_UNIT = "stratus-serve.service"
"""The systemd unit of the inference server on the serving host."""
SCRATCH_UNIT = "stratus-scratch.service"
"""The systemd unit that mounts a training node's scratch space."""
DLAMI_NVME_UNIT = "dlami-nvme.service"
"""The Deep Learning AMI's unit that mounts the instance-store disks (LVM) at /opt/dlami/nvme."""
STACK_ENV = "/etc/stratus/stack.env"
"""Names of the stack (region, buckets, bundle) and the host's settings, for the units."""
NODE_ENV = NODE_ENV_FILE
"""NCCL/EFA settings of the training node's type (the launch command sources it)."""
HOST_DIR = Path(__file__).with_name("host")
"""The host scripts, installed as `<APP_DIR>/<name>`."""
EX_CONFIG = 78
TLS_CERT_FLAG = "--tls-cert-ssm-parameter"
TLS_KEY_FLAG = "--tls-key-ssm-parameter"
"""`stratus serve` options naming the SSM parameters of the server certificate and key."""


EFA_LIBRARY_PATH = "/opt/amazon/ofi-nccl/lib64:/opt/amazon/ofi-nccl/lib:/opt/amazon/efa/lib64:/opt/amazon/efa/lib"
"""The aws-ofi-nccl plugin and libfabric as the Deep Learning AMI installs them (prepended to the
node command's LD_LIBRARY_PATH, `STRATUS_EFA_LIBRARY_PATH`: the AMI's own entries stay)."""
EFA_FLOOR_FRACTION = 0.25
"""Default preflight floor on EFA types: this fraction of the EFA bandwidth (GB/s). A 256 MiB
all-reduce reaches well above it on a healthy fabric; a fallback to TCP sockets stays far below."""
PREFLIGHT_MIB_EFA = 256
"""All-reduce size of the preflight on EFA types: large enough to measure the fabric's bandwidth,
not its latency (the runtime's default, 8 MiB, suits the CPU and socket hosts)."""


def nccl_env(instance_type: InstanceType) -> dict[str, str]:
    """NCCL and libfabric settings for `instance_type`, after aws-samples/awsome-distributed-training.

    EFA types use the aws-ofi-nccl plugin and libfabric's EFA provider (shipped by the Deep
    Learning AMI under /opt/amazon); `NCCL_NET` names the plugin's network, so NCCL fails instead
    of falling back to sockets when it is missing, and the preflight checks the choice and the
    bus bandwidth against a floor for the type (`STRATUS_MIN_BUS_GBPS`, overridable with
    `stratus remote --min-bus-gbps`). Types with RDMA over EFA (p4d, p5) enable it. Other types use
    TCP sockets, never the loopback or container bridges, with no default floor (their network
    figures are "up to" burst rates).
    """
    env = {"NCCL_SOCKET_IFNAME": "^lo,docker", "NCCL_DEBUG": "WARN"}
    if instance_type.efa_interfaces:
        env.update(
            {
                "FI_PROVIDER": "efa",
                "FI_EFA_FORK_SAFE": "1",
                "NCCL_BUFFSIZE": "8388608",
                "NCCL_P2P_NET_CHUNKSIZE": "524288",
                # aws-ofi-nccl's name up to 1.11 ("Libfabric" and "OFI" since; the old one still works)
                "NCCL_NET": "AWS Libfabric",
                "STRATUS_EFA_LIBRARY_PATH": EFA_LIBRARY_PATH,
                "STRATUS_FABRIC": "efa",
                "STRATUS_MIN_BUS_GBPS": f"{efa_floor_gbps(instance_type):g}",
                "STRATUS_PREFLIGHT_MIB": str(PREFLIGHT_MIB_EFA),
            }
        )
        if instance_type.efa_rdma:
            env["FI_EFA_USE_DEVICE_RDMA"] = "1"
    return env


def efa_floor_gbps(instance_type: InstanceType) -> float:
    """The preflight's default bus bandwidth floor (GB/s) of an EFA type: `EFA_FLOOR_FRACTION` of
    its network bandwidth (p5.48xlarge: 3200 Gbit/s -> 100 GB/s; p4d.24xlarge: 400 -> 12.5)."""
    return round(instance_type.network_gbps / 8 * EFA_FLOOR_FRACTION, 1)


def _env_text(env: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def _write(path: str, text: str, mode: str = "0644") -> str:
    """Shell that writes `text` to `$R<path>` with `mode` (a quoted heredoc: nothing expands)."""
    assert "\nSTRATUS_EOF\n" not in f"\n{text}"
    return f'cat > "$R{path}" <<\'STRATUS_EOF\'\n{text.rstrip()}\nSTRATUS_EOF\nchmod {mode} "$R{path}"\n'


def unit(
    description: str, service: str, *, after: str = "", before: str = "", wants: str = "", requires: str = ""
) -> str:
    """A systemd unit file: [Unit] with dependencies, the [Service] body, wanted by multi-user.target."""
    deps = (("Requires", requires), ("Wants", wants), ("After", after), ("Before", before))
    order = "".join(f"{k}={v}\n" for k, v in deps if v)
    install = "[Install]\nWantedBy=multi-user.target\n"
    return f"[Unit]\nDescription={description}\n{order}\n[Service]\n{service.strip()}\n\n{install}"


PREPARE_SERVICE = f"""\
Type=oneshot
RemainAfterExit=yes
EnvironmentFile={STACK_ENV}
ExecStart={APP_DIR}/prepare.sh
Restart=on-failure
RestartSec=60
RestartPreventExitStatus={EX_CONFIG}
"""
SCRATCH_SERVICE = f"""\
Type=oneshot
RemainAfterExit=yes
EnvironmentFile={STACK_ENV}
ExecStart={APP_DIR}/scratch.sh
"""

SERVE_SERVICE = f"""\
User=stratus
EnvironmentFile={STACK_ENV}
# Writable state/cache for downloaded model versions; the rest of the system is read-only.
StateDirectory=stratus-serve
CacheDirectory=stratus-serve
Environment=HOME=/var/lib/stratus-serve
ExecStartPre=/usr/bin/test -f {APP_DIR}/.ready
ExecStart={APP_DIR}/serve.sh
# `systemctl reload stratus-serve`: the server reads its token and TLS pair again (SIGHUP).
ExecReload=/usr/bin/kill -HUP $MAINPID
# SIGTERM drains (--drain-timeout, 30 s) well inside this.
TimeoutStopSec=90
Restart=on-failure
RestartSec=15
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
"""


def shipped_script(name: str) -> str:
    """The host script `name` as the user data carries it: its comment lines dropped (the
    repository's copy keeps them), as EC2 caps user data at 16 KB. Its heredocs hold Python code,
    where a dropped comment changes nothing."""
    first, *rest = (HOST_DIR / name).read_text().splitlines()
    return "\n".join([first, *(line for line in rest if not line.lstrip().startswith("#"))]) + "\n"


def _host(env: dict[str, str], scripts: tuple[str, ...], units: dict[str, str], extra: str = "") -> str:
    parts = [
        "#!/bin/bash\n# stratus user data: names only, no secrets.\nset -euo pipefail\n",
        'R="${STRATUS_SYSROOT:-}"\n',
        f'install -d -m 0755 "$R/etc/stratus" "$R{APP_DIR}" "$R/etc/systemd/system"\n',
        _write(STACK_ENV, _env_text(env)),
    ]
    parts += [_write(f"{APP_DIR}/{name}", shipped_script(name), "0755") for name in scripts]
    parts.append(extra)
    parts += [_write(f"/etc/systemd/system/{name}", text) for name, text in units.items()]
    parts.append(f"systemctl daemon-reload\nsystemctl enable --now --no-block {' '.join(units)}\n")
    return "".join(parts)


def trainer_user_data(*, region: str, buckets: dict[str, str], instance_type: InstanceType, scratch: str) -> str:
    """User data of a training node: stack and NCCL env, scratch mount, runtime bundle install.

    Args:
        region: the stack's region.
        buckets: bucket names by purpose (`datasets`, `checkpoints`, `models`, `logs`).
        instance_type: the node's catalog entry (GPUs, EFA, NVMe disks).
        scratch: `nvme`, `ebs` (volume at /dev/sdf) or `none` (`StackConfig.scratch`).
    """
    env = {
        "AWS_REGION": region,
        **{f"STRATUS_{k.upper()}_BUCKET": v for k, v in buckets.items()},
        ENV_BUNDLE_URI: bundle_uri(buckets["models"]),
        "STRATUS_GPU": "1",
        "STRATUS_SCRATCH": scratch,
        "STRATUS_NVME_DISKS": str(instance_type.nvme_disks),
        # DeepSpeed's ops are compiled at prepare on training nodes only (serving never builds them)
        "STRATUS_BUILD_OPS": "1",
    }
    units = {
        # After the Deep Learning AMI's dlami-nvme (its instance-store volume, reused by scratch.sh);
        # an After= on a unit that does not exist (other AMIs) is ignored.
        SCRATCH_UNIT: unit(
            f"stratus: mount {SCRATCH_MOUNT}",
            SCRATCH_SERVICE,
            after=f"local-fs.target {DLAMI_NVME_UNIT}",
            before=PREPARE_UNIT,
        ),
        # Requires=: no install (hence no training) on a node whose scratch failed to mount.
        PREPARE_UNIT: unit(
            "stratus: install the runtime bundle from S3",
            PREPARE_SERVICE,
            after=f"network-online.target {SCRATCH_UNIT}",
            wants="network-online.target",
            requires=SCRATCH_UNIT,
        ),
    }
    # STRATUS_SCRATCH: the node command refuses to train off the scratch mount unless it is `none`.
    node_env = _write(NODE_ENV, _env_text({**nccl_env(instance_type), "STRATUS_SCRATCH": scratch}))
    return _host(env, ("prepare.sh", "scratch.sh"), units, node_env)


def _serve_args(
    models_bucket: str,
    model_name: str,
    port: int,
    grpc_port: int,
    token_parameter: str,
    tls_cert_parameter: str | None,
    tls_key_parameter: str | None,
) -> str:
    """The flags of `stratus serve` on the serving host (after `--host`), shell-quoted:
    `--repo s3://<models_bucket>/models --model <name> --port <port> [--grpc-port <grpc port>]
    --token-ssm-parameter <name> --tls-cert-ssm-parameter <name> --tls-key-ssm-parameter <name>`.

    With both TLS parameters the server serves HTTPS and gRPC over TLS. With neither (a stack
    without a certificate yet) the flags say `--insecure-plain-http`, visibly, and the server logs
    a warning at every start. Raises ValueError when only one is given.
    """
    grpc = ["--grpc-port", str(grpc_port)] if grpc_port else []
    if bool(tls_cert_parameter) != bool(tls_key_parameter):
        raise ValueError("serving_user_data: give tls_cert_parameter and tls_key_parameter together")
    if tls_cert_parameter:
        tls = [TLS_CERT_FLAG, tls_cert_parameter, TLS_KEY_FLAG, tls_key_parameter]
    else:
        tls = ["--insecure-plain-http"]
    repo = model_repository_uri(models_bucket)
    return shlex.join(
        [
            "--repo",
            repo,
            "--model",
            model_name,
            "--port",
            str(port),
            *grpc,
            "--token-ssm-parameter",
            token_parameter,
            *tls,
        ]
    )


def serving_user_data(
    *,
    region: str,
    models_bucket: str,
    model_name: str,
    port: int,
    token_parameter: str,
    gpu: bool = False,
    grpc_port: int = 0,
    tls_cert_parameter: str | None = None,
    tls_key_parameter: str | None = None,
) -> str:
    """User data of the serving host: runtime install plus `SERVE_UNIT` (`stratus-serve.service`).

    The unit runs `python -m runtime serve --host <private ip>` with `_serve_args` as an
    unprivileged user, restarting on failure; the private IP comes from IMDSv2 at start. `systemctl
    stop` (SIGTERM) drains it within --drain-timeout (30 s), inside TimeoutStopSec (90 s).

    Args:
        region: the stack's region.
        models_bucket: name of the models bucket.
        model_name: model to serve (validated to a safe charset by the config).
        port: inference port (HTTP).
        token_parameter: SSM parameter NAME of the bearer token (never its value).
        gpu: a GPU host (torch must then be the CUDA build).
        grpc_port: Open Inference Protocol gRPC port (`--grpc-port`, same address); 0: HTTP only.
        tls_cert_parameter, tls_key_parameter: SSM parameter NAMEs of the PEM certificate and
            of its key (a SecureString); see `_serve_args`.
    """
    tls = (tls_cert_parameter, tls_key_parameter)
    serve_args = _serve_args(models_bucket, model_name, port, grpc_port, token_parameter, *tls)
    env = {
        "AWS_REGION": region,
        "STRATUS_MODELS_BUCKET": models_bucket,
        ENV_BUNDLE_URI: bundle_uri(models_bucket),
        "STRATUS_GPU": "1" if gpu else "0",
    }
    serve_sh = f"""\
#!/bin/bash
set -euo pipefail
IMDS_SESSION=$(curl -sf -X PUT http://169.254.169.254/latest/api/token \\
  -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
PRIVATE_IP=$(curl -sf -H "X-aws-ec2-metadata-token: $IMDS_SESSION" \\
  http://169.254.169.254/latest/meta-data/local-ipv4)
cd {APP_DIR}/app
exec {HOST_PYTHON} -m runtime serve --host "$PRIVATE_IP" {serve_args}
"""
    units = {
        PREPARE_UNIT: unit(
            "stratus: install the runtime bundle from S3",
            PREPARE_SERVICE,
            after="network-online.target",
            wants="network-online.target",
        ),
        SERVE_UNIT: unit(
            "stratus: Open Inference Protocol server",
            SERVE_SERVICE,
            after=f"network-online.target {PREPARE_UNIT}",
            wants=f"network-online.target {PREPARE_UNIT}",
        ),
    }
    user = "id stratus >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin stratus\n"
    return _host(env, ("prepare.sh",), units, user + _write(f"{APP_DIR}/serve.sh", serve_sh, "0755"))
