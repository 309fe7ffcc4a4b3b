"""User data (cloud-init shell scripts) for training nodes and the serving host.

Pure functions of names only: no secret ever enters user data (it is readable by anyone with
`ec2:DescribeInstanceAttribute`). The serving token is fetched from SSM by the server at start.

Both hosts run Amazon Linux 2023 (the Deep Learning AMI flavour on GPU types). They install the
runtime from the bundle at `runtime.contract.bundle_uri(models_bucket)`
(`s3://<models_bucket>/runtime/stratus-runtime.tar.gz`), which the operator uploads
(`scripts/launch.sh --stack`): a tarball holding `runtime/`, `requirements.txt` and optionally
`wheels/` for an offline install. S3 is reached through the VPC gateway endpoint, so no internet
egress is needed when the bundle carries its wheels. A systemd oneshot (`PREPARE_UNIT`) retries
until the bundle exists, so boot never blocks on it. Every path the runtime relies on (the app
and venv directories, the bundle, the scratch mount) comes from `runtime.contract`.
"""

from __future__ import annotations

import shlex

from runtime.contract import (
    APP_DIR,
    HOST_BUNDLE,
    HOST_PYTHON,
    PREPARE_UNIT,
    SCRATCH_MOUNT,
    bundle_uri,
    model_repository_uri,
)

SCRATCH_DEVICE = "/dev/sdf"
"""Device name of a training node's scratch volume in the launch template."""
SERVE_UNIT = "stratus-serve.service"
"""The systemd unit of the inference server on the serving host."""
VENV_DIR = HOST_PYTHON.rsplit("/bin/", 1)[0]


def _prepare_section(models_bucket: str, region: str) -> str:
    bundle = shlex.quote(bundle_uri(models_bucket))
    return f"""\
install -d -m 0755 {APP_DIR} {APP_DIR}/app
cat > {APP_DIR}/prepare.sh <<'PREPARE'
#!/bin/bash
# Fetch the runtime bundle and build the venv; exits non-zero (systemd retries) until it exists.
set -euo pipefail
aws s3 cp --region {region} --only-show-errors {bundle} {HOST_BUNDLE}
rm -rf {APP_DIR}/app.new && mkdir -p {APP_DIR}/app.new
tar -xzf {HOST_BUNDLE} -C {APP_DIR}/app.new
rm -rf {APP_DIR}/app && mv {APP_DIR}/app.new {APP_DIR}/app
PY=$(command -v python3.11 || command -v python3)
"$PY" -m venv --system-site-packages {VENV_DIR}
if [ -d {APP_DIR}/app/wheels ]; then
  {VENV_DIR}/bin/pip install --no-index --find-links {APP_DIR}/app/wheels \\
    -r {APP_DIR}/app/requirements.txt
else
  {VENV_DIR}/bin/pip install -r {APP_DIR}/app/requirements.txt
fi
touch {APP_DIR}/.ready
PREPARE
chmod 0755 {APP_DIR}/prepare.sh
cat > /etc/systemd/system/{PREPARE_UNIT} <<'UNIT'
[Unit]
Description=stratus: install the runtime bundle from S3
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={APP_DIR}/prepare.sh
Restart=on-failure
RestartSec=60

[Install]
WantedBy=multi-user.target
UNIT
"""


def _header(stack_env: dict[str, str]) -> str:
    env_lines = "\n".join(f"{k}={shlex.quote(v)}" for k, v in sorted(stack_env.items()))
    return f"""\
#!/bin/bash
# stratus user data: names only, no secrets.
set -euo pipefail
install -d -m 0755 /etc/stratus
cat > /etc/stratus/stack.env <<'ENV'
{env_lines}
ENV
"""


def trainer_user_data(*, region: str, buckets: dict[str, str], scratch: bool) -> str:
    """User data of a training node: stack env file, scratch volume, runtime bundle install.

    Args:
        region: the stack's region.
        buckets: bucket names by purpose (`datasets`, `checkpoints`, `models`, `logs`).
        scratch: whether the launch template attaches a scratch volume at /dev/sdf.
    """
    env = {"AWS_REGION": region, **{f"STRATUS_{k.upper()}_BUCKET": v for k, v in buckets.items()}}
    mount = ""
    if scratch:
        # On Nitro the EBS volume appears as NVMe; Amazon Linux's udev rules keep /dev/sdf.
        mount = f"""\
for _ in $(seq 60); do [ -e {SCRATCH_DEVICE} ] && break; sleep 2; done
blkid {SCRATCH_DEVICE} >/dev/null || mkfs.xfs -q {SCRATCH_DEVICE}
install -d {SCRATCH_MOUNT}
grep -q ' {SCRATCH_MOUNT} ' /etc/fstab || \\
  echo "{SCRATCH_DEVICE} {SCRATCH_MOUNT} xfs defaults,nofail 0 2" >> /etc/fstab
mount -a
"""
    return (
        _header(env)
        + mount
        + _prepare_section(buckets["models"], region)
        + f"systemctl daemon-reload\nsystemctl enable --now --no-block {PREPARE_UNIT}\n"
    )


def serving_user_data(*, region: str, models_bucket: str, model_name: str, port: int, token_parameter: str) -> str:
    """User data of the serving host: runtime install plus `SERVE_UNIT` (`stratus-serve.service`).

    The unit runs `python -m runtime serve --repo s3://<models_bucket>/models --model <name>
    --host <private ip> --port <port> --token-ssm-parameter <name>` as an unprivileged user,
    restarting on failure. The private IP comes from IMDSv2 at start, so the unit survives an
    instance replacement.

    Args:
        region: the stack's region.
        models_bucket: name of the models bucket.
        model_name: model to serve (validated to a safe charset by the config).
        port: inference port.
        token_parameter: SSM parameter NAME of the bearer token (never its value).
    """
    repo = model_repository_uri(models_bucket)
    serve_args = " ".join(
        shlex.quote(a)
        for a in ["--repo", repo, "--model", model_name, "--port", str(port),
                  "--token-ssm-parameter", token_parameter]
    )  # fmt: skip
    env = {"AWS_REGION": region, "STRATUS_MODELS_BUCKET": models_bucket}
    return (
        _header(env)
        + _prepare_section(models_bucket, region)
        + f"""\
id stratus >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin stratus
cat > {APP_DIR}/serve.sh <<'SERVE'
#!/bin/bash
set -euo pipefail
IMDS_SESSION=$(curl -sf -X PUT http://169.254.169.254/latest/api/token \\
  -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
PRIVATE_IP=$(curl -sf -H "X-aws-ec2-metadata-token: $IMDS_SESSION" \\
  http://169.254.169.254/latest/meta-data/local-ipv4)
cd {APP_DIR}/app
exec {HOST_PYTHON} -m runtime serve --host "$PRIVATE_IP" {serve_args}
SERVE
chmod 0755 {APP_DIR}/serve.sh
cat > /etc/systemd/system/{SERVE_UNIT} <<'UNIT'
[Unit]
Description=stratus: Open Inference Protocol server
Wants=network-online.target {PREPARE_UNIT}
After=network-online.target {PREPARE_UNIT}

[Service]
User=stratus
EnvironmentFile=/etc/stratus/stack.env
# Writable state/cache for downloaded model versions; the rest of the system is read-only.
StateDirectory=stratus-serve
CacheDirectory=stratus-serve
Environment=HOME=/var/lib/stratus-serve
ExecStartPre=/usr/bin/test -f {APP_DIR}/.ready
ExecStart={APP_DIR}/serve.sh
Restart=on-failure
RestartSec=15
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now --no-block {PREPARE_UNIT} {SERVE_UNIT}
"""
    )
