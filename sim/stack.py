"""A simulated stack on this machine: training nodes and a serving host as Linux network namespaces.

Runbook (as root; `scripts/sim-stack.sh` wraps it):
    python -m sim.stack up /tmp/sim --nodes 2       # namespaces, bridge, S3/KMS emulator
    stratus remote --sim-dir /tmp/sim -- --preset mlp-binary --set max_steps=20
    python -m sim.stack replace-node /tmp/sim sim-node1  # the group replaces it: sim-node2, new IP
    python -m sim.stack down /tmp/sim               # processes, namespaces, bridge: gone

What `up` makes: a bridge with an address of a free 10.231.X.0/24, one namespace per node (its own
address on the bridge, loopback up, `eth0` inside), an AWS emulator (moto server, from the
development requirements) bound to the bridge address only, the stack's KMS key and four buckets
on it, the serving token and TLS pair in SSM (a CA made here, `sim.pki`: what the stack's
pulumi-tls resources make), the load balancer stand-in (`sim.balancer`) in its own namespace,
`<dir>/outputs.json` in the shape of `pulumi stack output --json`, and `<dir>/sim.json`
for `sim.transport.LocalTransport`. Each node's root directory holds what is
bind-mounted at the contract's host paths while its commands run: `scratch/` (`/scratch`),
`opt-stratus/` (`/opt/stratus`: `venv/bin/python` runs this machine's interpreter), `etc-stratus/`
(`/etc/stratus`, its `node.env` selects the CPU accelerator and gloo's interface) and `systemd/`
(`/etc/systemd/system`). `systemctl` on a simulated host is `sim.host`'s stand-in:
`restart stratus-prepare.service` fetches and unpacks the runtime bundle from the emulator as the
real unit does. Serving hosts are launched later (`add_serving_host`, by `sim.serve`: the Auto
Scaling group's part), each booted from its user data by `sim.host.boot` with a metadata
service in its namespace. The serving token is an SSM SecureString under the stack key, as on the
stack, and so is the server's TLS key.

The training nodes are a simulated Auto Scaling group too (`sim.nodes`; the frozen
`trainer_instance_ids` / `trainer_private_ips` outputs are `[]`, as on a group-based stack), kept
at its size by its controller (`sim.group`, started last by `up`). Each node boots up to its
scratch as a Deep Learning AMI node does (`sim.instance_store`): its `scratch/` is the stack's
`scratch.sh`'s bind mount of the AMI's striped instance-store volume (loop devices).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from runtime.contract import APP_DIR, ENV_BUNDLE_URI, HOST_BUNDLE, bundle_uri
from sim import instance_store, netns
from sim.nodes import TRAINER_GROUP, add_training_node, node_root, read_sim_file, replace_node, update_sim
from sim.prepare import ENV_REAL_PREPARE
from sim.transport import SIM_FILE

PREFIX = netns.PREFIX
REGION = "us-east-1"
TOKEN_PARAMETER = "/stratus/sim/serving-token"  # noqa: S105 - the parameter's name, not a token
TLS_CERT_PARAMETER = "/stratus/sim/serving-tls-cert"
TLS_KEY_PARAMETER = "/stratus/sim/serving-tls-key"
SERVING_GROUP = "sim-serving"
"""The simulated serving hosts' "Auto Scaling group": hosts are `sim-serving<N>`, N counting up."""
SERVING_PORT = 8080
GRPC_PORT = 8001
BALANCER_HOST = 19
SERVING_HOSTS = range(20, 40)
"""Host numbers of the bridge subnet: the load balancer's address, and the pool its serving hosts'
addresses come from (the server certificate names all of them, as the stack's names the hosts'
private DNS wildcard)."""
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim", "AWS_SESSION_TOKEN": "sim"}


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - the emulator we just started
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the AWS emulator did not start at {url}") from None
            time.sleep(0.2)


def _stand_ins(bin_dir: Path) -> None:
    """`systemctl` (sim.host) and `useradd` (no user is created on this machine)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    scripts = {
        "systemctl": f"#!/bin/sh\n# A simulated host has no systemd (sim.host).\n"
        f'cd {shlex.quote(str(repo))} && exec {shlex.quote(sys.executable)} -m sim.host systemctl "$@"\n',
        "useradd": '#!/bin/sh\necho "simulated host: useradd $* skipped (units run as root)" >&2\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def client(sim_dir: Path, service: str) -> Any:
    """A boto3 client for the emulator of the simulated stack in `sim_dir` (its endpoint and credentials)."""
    import boto3

    env = json.loads((Path(sim_dir) / SIM_FILE).read_text())["env"]
    return boto3.client(
        service,
        region_name=env["AWS_DEFAULT_REGION"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
    )


def _serving_tls(ssm: Any, key_arn: str, directory: Path, ips: list[str]) -> str:
    """The stack's serving CA and server certificate (`infra/components/tls.py` on AWS): the
    certificate in SSM as a String, its key as a SecureString under the stack key; the CA's PEM."""
    from sim.pki import LocalCA

    ca = LocalCA.create(directory, name="stratus simulated stack CA")
    pair = ca.issue(directory / "server", common_name="stratus serving", ips=tuple(ips), dns_names=())
    ssm.put_parameter(Name=TLS_CERT_PARAMETER, Value=pair.cert.read_text(), Type="String")
    ssm.put_parameter(Name=TLS_KEY_PARAMETER, Value=pair.key.read_text(), Type="SecureString", KeyId=key_arn)
    shutil.rmtree(directory / "server")  # the key lives in SSM only; the CA's key is not kept either
    return ca.cert_path.read_text()


def _aws_resources(endpoint: str, sim_dir: Path, serving_ips: list[str]) -> dict[str, Any]:
    import boto3

    kw = {
        "region_name": REGION,
        "endpoint_url": endpoint,
        "aws_access_key_id": "sim",
        "aws_secret_access_key": "sim",
        "aws_session_token": "sim",
    }
    key_arn = boto3.client("kms", **kw).create_key(Description="stratus simulated stack")["KeyMetadata"]["Arn"]
    s3 = boto3.client("s3", **kw)
    sfx = secrets.token_hex(4)
    buckets = {p: f"stratus-sim-{p}-{sfx}" for p in ("datasets", "checkpoints", "models", "logs")}
    for b in buckets.values():
        s3.create_bucket(Bucket=b)
    # The serving token, as the stack's SSM SecureString under its key (the server reads it at start).
    ssm = boto3.client("ssm", **kw)
    ssm.put_parameter(Name=TOKEN_PARAMETER, Value=secrets.token_urlsafe(32), Type="SecureString", KeyId=key_arn)
    ca_pem = _serving_tls(ssm, key_arn, sim_dir / "serving-ca", serving_ips)
    return {"kms_key_arn": key_arn, **{f"{p}_bucket": b for p, b in buckets.items()}, "ca": ca_pem}


def _serving_front(sim: dict[str, Any], sim_dir: Path, lb_ip: str, pool: list[str]) -> None:
    """The internal load balancer's stand-in (`sim.balancer`) in its own namespace, no targets yet:
    serving hosts join it as `sim.serve` launches them (the Auto Scaling group's part)."""
    from sim import balancer

    sim["balancer"] = {"netns": f"{PREFIX}{sim['suffix']}lb", "ip": lb_ip, "dir": str(sim_dir / "balancer")}
    sim["serving_pool"], sim["serving_hosts"], sim["serving_launched"] = pool, {}, 0
    netns.add_namespace(sim, sim["balancer"]["netns"], lb_ip, 98)
    directory = Path(sim["balancer"]["dir"])
    pid = balancer.start(directory, sim["balancer"]["netns"], lb_ip, [SERVING_PORT, GRPC_PORT], SERVING_PORT)
    sim["pids"].append(pid)


def _serving_outputs(lb_ip: str, ca_pem: str) -> dict[str, Any]:
    """The serving outputs of a stack whose hosts are an Auto Scaling group behind the load balancer."""
    return {
        "serving_instance_id": None,
        "serving_private_ip": None,
        "serving_url": f"https://{lb_ip}:{SERVING_PORT}",
        "serving_grpc_target": f"{lb_ip}:{GRPC_PORT}",
        "serving_token_parameter": TOKEN_PARAMETER,
        "estimated_hourly_usd": 0.0,
        "serving_ca_certificate": ca_pem,
        "serving_tls_cert_parameter": TLS_CERT_PARAMETER,
        "serving_tls_key_parameter": TLS_KEY_PARAMETER,
        "serving_autoscaling_group": SERVING_GROUP,
    }


def up(sim_dir: Path, *, num_nodes: int = 2, tag: str = "", real_prepare: bool = False) -> dict[str, Any]:
    """Create the simulated stack in `sim_dir` (see the module docstring); return its outputs.

    `real_prepare`: the hosts' prepare unit runs the real `prepare.sh` (`sim.prepare`), which
    builds their venvs offline from the launch's wheelhouse (launch with `--wheels`).

    Whatever was created is removed again when a step fails.
    """
    sim_dir = Path(sim_dir).resolve()
    sim_dir.mkdir(parents=True, exist_ok=True)
    sfx = tag + secrets.token_hex(2)
    net = netns.free_subnet()
    hosts = list(net.hosts())
    sim: dict[str, Any] = {
        "suffix": sfx,
        "bridge": f"{PREFIX}{sfx}br",
        "prefixlen": net.prefixlen,
        "gateway": str(hosts[0]),
        "namespaces": [],
        "nodes": {},
        "trainer_group": {"name": TRAINER_GROUP, "desired": num_nodes, "launched": 0},
        "pids": [],
        "bin": str(sim_dir / "bin"),
        "real_prepare": real_prepare,
    }
    (sim_dir / SIM_FILE).write_text(json.dumps(sim))
    try:
        netns.run_ip("link", "add", sim["bridge"], "type", "bridge")
        netns.run_ip("addr", "add", f"{sim['gateway']}/{net.prefixlen}", "dev", sim["bridge"])
        netns.run_ip("link", "set", sim["bridge"], "up")
        port = 4566
        log = open(sim_dir / "emulator.log", "wb")  # noqa: SIM115 - lives as long as the server
        moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", sim["gateway"], "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sim["pids"].append(moto.pid)
        endpoint = f"http://{sim['gateway']}:{port}"
        _wait_http(f"{endpoint}/moto-api/", moto)
        lb_ip, pool = str(hosts[BALANCER_HOST]), [str(hosts[i]) for i in SERVING_HOSTS]
        resources = _aws_resources(endpoint, sim_dir, [lb_ip, *pool])
        ca_pem = resources.pop("ca")
        for _ in range(num_nodes):
            add_training_node(sim, sim_dir)
        _serving_front(sim, sim_dir, lb_ip, pool)
        _stand_ins(sim_dir / "bin")
        sim["env"] = {
            "AWS_ENDPOINT_URL": endpoint,
            **_CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            ENV_BUNDLE_URI: bundle_uri(resources["models_bucket"]),
            **({ENV_REAL_PREPARE: "1"} if real_prepare else {}),
        }
        outputs = {
            "region": REGION,
            **resources,
            "trainer_instance_ids": [],
            "trainer_private_ips": [],
            "trainer_slots_per_node": 1,
            "trainer_autoscaling_group": TRAINER_GROUP,
            **_serving_outputs(lb_ip, ca_pem),
            # The nodes have no route out. With the real prepare that is what the launcher must know
            # (it refuses a launch without --wheels); the default simulated prepare installs nothing.
            **({"egress_enabled": False} if real_prepare else {}),
        }
        (sim_dir / "outputs.json").write_text(json.dumps(outputs, indent=1))
        (sim_dir / SIM_FILE).write_text(json.dumps(sim, indent=1))
        _start_group_controller(sim_dir)
        return outputs
    except BaseException:
        (sim_dir / SIM_FILE).write_text(json.dumps(sim, indent=1))
        down(sim_dir)
        raise


def _start_group_controller(sim_dir: Path) -> None:
    """`sim.group` in the background (its pid in sim.json: `down` stops it first)."""
    repo = Path(__file__).resolve().parents[1]
    with open(sim_dir / "group.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sim.group", str(sim_dir)],
            cwd=repo,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def record(sim: dict[str, Any]) -> None:
        sim["group_pid"] = proc.pid
        sim["pids"].append(proc.pid)

    update_sim(sim_dir, record)


def add_serving_host(sim_dir: Path) -> str:
    """A new serving host (namespace, address from the pool, root directory), as the Auto Scaling
    group launches an instance: a new instance id every time, never reused. Its id."""

    def launch(sim: dict[str, Any]) -> str:
        used = {h["ip"] for h in sim["serving_hosts"].values()}
        free = [ip for ip in sim["serving_pool"] if ip not in used]
        if not free:
            raise RuntimeError(f"no free address left for a serving host ({len(used)} in use)")
        n = sim["serving_launched"]
        sim["serving_launched"] = n + 1
        iid = f"{SERVING_GROUP}{n}"
        host = {"netns": f"{PREFIX}{sim['suffix']}s{n}", "ip": free[0], "root": str(Path(sim_dir) / iid)}
        sim["serving_hosts"][iid] = host
        netns.add_namespace(sim, host["netns"], host["ip"], 100 + n)
        node_root(Path(host["root"]))
        return iid

    return update_sim(sim_dir, launch)


def remove_serving_host(sim_dir: Path, instance_id: str) -> None:
    """Terminate a serving host: every process in its namespace, the namespace, its entry."""

    def terminate(sim: dict[str, Any]) -> None:
        host = sim["serving_hosts"].pop(instance_id)
        netns.remove_namespace(host["netns"])
        sim["namespaces"].remove(host["netns"])

    update_sim(sim_dir, terminate)


def down(sim_dir: Path) -> None:
    """Remove everything `up` made in `sim_dir`: the group's controller, processes, namespaces,
    the nodes' instance stores (mounts, loop devices, images), veths, the bridge. Idempotent."""
    path = Path(sim_dir) / SIM_FILE
    if not path.is_file():
        return
    sim = json.loads(path.read_text())
    if sim.get("group_pid"):  # first, so that it launches nothing while the nodes go
        netns.kill([sim["group_pid"]])
        sim = json.loads(path.read_text())  # with whatever it launched last
    for name in sim.get("namespaces", []):
        netns.remove_namespace(name)
    netns.kill(sim.get("pids", []))
    for node in sim.get("nodes", {}).values():
        instance_store.release(Path(node["root"]))
    instance_store.release(Path(sim_dir))  # anything a failed boot left under the directory
    netns.run_ip("link", "delete", sim["bridge"], check=False)
    path.rename(path.with_suffix(".down"))


def prepare() -> int:
    """The simulated `stratus-prepare.service`: fetch the bundle and unpack it into `<APP_DIR>/app`."""
    import boto3

    from runtime.common.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(os.environ[ENV_BUNDLE_URI])
    boto3.client("s3").download_file(bucket, key, HOST_BUNDLE)
    app, new = Path(APP_DIR) / "app", Path(APP_DIR) / "app.new"
    subprocess.run(["rm", "-rf", str(new), str(app)], check=True)
    with tarfile.open(HOST_BUNDLE) as tar:
        tar.extractall(new, filter="data")
    new.rename(app)
    Path(APP_DIR, ".ready").touch()  # what the real unit writes last (serve's ExecStartPre checks it)
    print(f"[stratus-prepare] simulated: {bucket}/{key} unpacked into {app}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("up", "down", "prepare", "replace-node"))
    parser.add_argument("dir", nargs="?", type=Path, help="directory of the simulated stack")
    parser.add_argument("instance", nargs="?", help="replace-node: the training node to replace (e.g. sim-node1)")
    parser.add_argument("--nodes", type=int, default=2, help="training nodes (default 2)")
    parser.add_argument(
        "--real-prepare",
        action="store_true",
        help="the hosts run the real prepare.sh: venv built offline from the launch's wheels (launch with --wheels)",
    )
    args = parser.parse_args(argv)
    if args.action == "prepare":
        return prepare()
    if args.dir is None:
        parser.error(f"{args.action} needs the directory of the simulated stack")
    if os.geteuid() != 0:
        print("simulated nodes need root (network namespaces, bind mounts)", file=sys.stderr)
        return 2
    if args.action == "down":
        down(args.dir)
        print(f"simulated stack in {args.dir} removed")
        return 0
    if args.action == "replace-node":
        nodes = read_sim_file(args.dir)["nodes"]
        if args.instance not in nodes:
            parser.error(f"replace-node needs a training node of {args.dir}: one of {', '.join(nodes)}")
        print(f"{args.instance} terminated; the group launched {replace_node(args.dir, args.instance)}")
        return 0
    outputs = up(args.dir, num_nodes=args.nodes, real_prepare=args.real_prepare)
    print(json.dumps(outputs, indent=1))
    print(
        f"up: train with `stratus remote --sim-dir {args.dir} -- ...`; "
        f"remove with `scripts/sim-stack.sh down {args.dir}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
