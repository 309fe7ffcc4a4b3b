"""A simulated stack on this machine: training nodes and a serving host as Linux network namespaces.

Runbook (as root; `scripts/sim-stack.sh` wraps it):
    python -m sim.stack up /tmp/sim --nodes 2       # namespaces, bridge, S3/KMS emulator
    stratus remote --sim-dir /tmp/sim -- --preset mlp-binary --set max_steps=20
    python -m sim.stack down /tmp/sim               # processes, namespaces, bridge: gone

What `up` makes: a bridge with an address of a free 10.231.X.0/24, one namespace per node (its own
address on the bridge, loopback up, `eth0` inside), an AWS emulator (moto server, from the
development requirements) bound to the bridge address only, the stack's KMS key and four buckets
on it, `<dir>/outputs.json` in the shape of `pulumi stack output --json`, and `<dir>/sim.json`
for `sim.transport.LocalTransport`. Each node's root directory holds what is
bind-mounted at the contract's host paths while its commands run: `scratch/` (`/scratch`),
`opt-stratus/` (`/opt/stratus`: `venv/bin/python` runs this machine's interpreter), `etc-stratus/`
(`/etc/stratus`, its `node.env` selects the CPU accelerator and gloo's interface) and `systemd/`
(`/etc/systemd/system`). `systemctl` on a simulated host is `sim.host`'s stand-in:
`restart stratus-prepare.service` fetches and unpacks the runtime bundle from the emulator as the
real unit does; the serving host is booted from its user data by `sim.host.boot`
(`scripts/sim-stack.sh serve DIR`), with a metadata service in its namespace. The serving token
is an SSM SecureString under the stack key, as on the stack.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from runtime.contract import APP_DIR, ENV_BUNDLE_URI, HOST_BUNDLE, bundle_uri
from sim.transport import SIM_FILE

PREFIX = "stsim"
NETNS_ETC = Path("/etc/netns")
REGION = "us-east-1"
TOKEN_PARAMETER = "/stratus/sim/serving-token"  # noqa: S105 - the parameter's name, not a token
SERVING_ID = "sim-serving"
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim", "AWS_SESSION_TOKEN": "sim"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-4", "-o", "addr").stdout
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.231.{secrets.randbelow(250) + 1}.0/24")
        if f" {str(net.network_address)[:-1]}" not in used:
            return net
    raise RuntimeError("no free 10.231.X.0/24 subnet for the simulated stack")


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


def _add_namespace(sim: dict[str, Any], name: str, ip: str, index: int) -> None:
    bridge, sfx = sim["bridge"], sim["suffix"]
    host_if = f"{PREFIX}{sfx}v{index}"
    _ip("netns", "add", name)
    sim["namespaces"].append(name)
    _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
    _ip("link", "set", host_if, "master", bridge, "up")
    _ip("-n", name, "addr", "add", f"{ip}/{sim['prefixlen']}", "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    _ip("-n", name, "link", "set", "lo", "up")
    # `ip netns exec` mounts /etc/netns/<name>/* over /etc: no DNS server is reachable from the
    # bridge, so name lookups (gloo and c10d resolve peers) must fail fast, and names come from hosts.
    etc = NETNS_ETC / name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("# simulated node: no DNS\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{ip} {socket.gethostname()}\n")


def _node_root(root: Path) -> None:
    for sub in ("scratch", "opt-stratus", "etc-stratus", "systemd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # `/opt/stratus/venv/bin/python` execs this machine's interpreter by its own path, so the nodes
    # import DeepSpeed from the same files as this machine: torch's JIT builds of DeepSpeed's ops get
    # the same compiler command lines and share one build cache (TORCH_EXTENSIONS_DIR, else
    # ~/.cache/torch_extensions) instead of rebuilding each other's (a build dir has a file lock).
    venv = root / "opt-stratus" / "venv"
    if venv.is_symlink():  # a directory made by an older version linked the virtualenv itself
        venv.unlink()
    venv_bin = venv / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        (venv_bin / name).write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (venv_bin / name).chmod(0o755)
    # The real node.env carries the instance type's NCCL/EFA settings; a simulated node is a CPU host.
    env = {"DS_ACCELERATOR": "cpu", "GLOO_SOCKET_IFNAME": "eth0"}
    if os.environ.get("TORCH_EXTENSIONS_DIR"):  # else torch's default under HOME (/root on the nodes)
        env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    (root / "etc-stratus" / "node.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


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


def _aws_resources(endpoint: str) -> dict[str, Any]:
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
    boto3.client("ssm", **kw).put_parameter(
        Name=TOKEN_PARAMETER, Value=secrets.token_urlsafe(32), Type="SecureString", KeyId=key_arn
    )
    return {"kms_key_arn": key_arn, **{f"{p}_bucket": b for p, b in buckets.items()}}


def up(sim_dir: Path, *, num_nodes: int = 2, tag: str = "") -> dict[str, Any]:
    """Create the simulated stack in `sim_dir` (see the module docstring); return its outputs.

    Whatever was created is removed again when a step fails.
    """
    sim_dir = Path(sim_dir).resolve()
    sim_dir.mkdir(parents=True, exist_ok=True)
    sfx = tag + secrets.token_hex(2)
    net = _free_subnet()
    hosts = list(net.hosts())
    sim: dict[str, Any] = {
        "suffix": sfx,
        "bridge": f"{PREFIX}{sfx}br",
        "prefixlen": net.prefixlen,
        "gateway": str(hosts[0]),
        "namespaces": [],
        "nodes": {},
        "pids": [],
        "bin": str(sim_dir / "bin"),
    }
    (sim_dir / SIM_FILE).write_text(json.dumps(sim))
    try:
        _ip("link", "add", sim["bridge"], "type", "bridge")
        _ip("addr", "add", f"{sim['gateway']}/{net.prefixlen}", "dev", sim["bridge"])
        _ip("link", "set", sim["bridge"], "up")
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
        resources = _aws_resources(endpoint)
        ips = [str(hosts[10 + i]) for i in range(num_nodes)]
        for i, ip in enumerate(ips):
            iid = f"sim-node{i}"
            sim["nodes"][iid] = {"netns": f"{PREFIX}{sfx}n{i}", "ip": ip, "root": str(sim_dir / iid)}
            _add_namespace(sim, sim["nodes"][iid]["netns"], ip, i)
            _node_root(sim_dir / iid)
        serving_ip = str(hosts[19])
        sim["serving"] = {
            "id": SERVING_ID,
            "netns": f"{PREFIX}{sfx}s",
            "ip": serving_ip,
            "root": str(sim_dir / SERVING_ID),
        }
        _add_namespace(sim, sim["serving"]["netns"], serving_ip, 99)
        _node_root(sim_dir / SERVING_ID)
        _stand_ins(sim_dir / "bin")
        sim["env"] = {
            "AWS_ENDPOINT_URL": endpoint,
            **_CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            ENV_BUNDLE_URI: bundle_uri(resources["models_bucket"]),
        }
        outputs = {
            "region": REGION,
            **resources,
            "trainer_instance_ids": list(sim["nodes"]),
            "trainer_private_ips": ips,
            "trainer_slots_per_node": 1,
            "serving_instance_id": SERVING_ID,
            "serving_private_ip": serving_ip,
            "serving_url": f"http://{serving_ip}:8080",
            "serving_token_parameter": TOKEN_PARAMETER,
            "estimated_hourly_usd": 0.0,
        }
        (sim_dir / "outputs.json").write_text(json.dumps(outputs, indent=1))
        (sim_dir / SIM_FILE).write_text(json.dumps(sim, indent=1))
        return outputs
    except BaseException:
        (sim_dir / SIM_FILE).write_text(json.dumps(sim, indent=1))
        down(sim_dir)
        raise


def _kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 5
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and _not_zombie(p)]
            time.sleep(0.1)
        if not alive:
            return


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def remove_namespace(name: str) -> None:
    """Kill every process in the namespace, then delete it (its veth goes with it)."""
    pids = [int(p) for p in _ip("netns", "pids", name, check=False).stdout.split()]
    _kill(pids)
    _ip("netns", "delete", name, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def down(sim_dir: Path) -> None:
    """Remove everything `up` made in `sim_dir`: processes, namespaces, veths, the bridge. Idempotent."""
    path = Path(sim_dir) / SIM_FILE
    if not path.is_file():
        return
    sim = json.loads(path.read_text())
    for name in sim.get("namespaces", []):
        remove_namespace(name)
    _kill(sim.get("pids", []))
    _ip("link", "delete", sim["bridge"], check=False)
    path.rename(path.with_suffix(".down"))


def remove_leftovers(prefix: str) -> list[str]:
    """Delete every namespace and link whose name starts with `prefix` (left by a killed run)."""
    gone = []
    for name in _ip("netns", "list", check=False).stdout.split():
        if name.startswith(prefix):
            remove_namespace(name)
            gone.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            _ip("link", "delete", name, check=False)
            gone.append(name)
    return gone


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
    parser.add_argument("action", choices=("up", "down", "prepare"))
    parser.add_argument("dir", nargs="?", type=Path, help="directory of the simulated stack")
    parser.add_argument("--nodes", type=int, default=2, help="training nodes (default 2)")
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
    outputs = up(args.dir, num_nodes=args.nodes)
    print(json.dumps(outputs, indent=1))
    print(
        f"up: train with `stratus remote --sim-dir {args.dir} -- ...`; "
        f"remove with `scripts/sim-stack.sh down {args.dir}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
