"""Boot the serving hosts of a simulated stack with the user data the stack gives real ones.

    python -m sim.serve /tmp/sim [--hosts 2] [--model-name mlp-binary] [--wheels W]
    python -m sim.serve /tmp/sim --replace sim-serving0      # one step of an instance refresh

(`scripts/sim-stack.sh serve DIR` runs the first.) Uploads the runtime bundle to the simulated
models bucket (as a launch does, SSE-KMS under the stack key; with `--wheels W`, the wheelhouse
and the bundle naming it, as `stratus remote --wheels` does: a stack made with `--real-prepare`
needs it, its hosts installing offline), renders
`infra.builders.userdata.serving_user_data` with the simulated stack's outputs (TLS pair and token
from the emulated SSM), and does the Auto Scaling group's part: each host is a new namespace with
a new instance id and an address from the pool, booted with that user data (`sim.host.boot`:
`stratus-serve.service` runs `serve.sh`, which asks the host's metadata service for its private
address and starts `python -m runtime serve --repo s3://<models_bucket>/models ...` on it, with
HTTPS and gRPC over TLS), then registered with the load balancer stand-in (`sim.balancer`), which
sends it connections once its readiness check passes (a version of the model must be published:
`scripts/launch.sh --sim-dir DIR` publishes one).

`--replace ID` does what an instance refresh does to one host: launch and boot a new host, wait
until the load balancer finds it healthy, deregister the old one, let its open connections finish
(at most `--drain-seconds`), stop its server (SIGTERM: it drains and exits 0), terminate it.

Clients use `serving_url` / `serving_grpc_target` of `<dir>/outputs.json` (the load balancer) with
`serving_ca_certificate` as the CA. A host's output is in
`<dir>/<id>/journal/stratus-serve.service.log`.

Exit status: 0 done; 1 a host's user data failed or a replacement did not become healthy (see
`<dir>/<id>/cloud-init-output.log`); 2 bad arguments or no simulated stack in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.builders.userdata import SERVE_UNIT, serving_user_data
from runtime.common.s3 import sse_kms_args
from runtime.contract import BUNDLE_KEY, model_name_problem
from runtime.remote import wheelhouse
from runtime.remote.bundle import bundle_entries, write_bundle
from runtime.remote.outputs import RemoteError
from runtime.remote.wheels import check_wheelhouse
from sim import balancer, host, stack

ROOT = Path(__file__).resolve().parents[1]
DRAIN_SECONDS = 30
"""The simulated target groups' deregistration delay (the stack's `serving-drain-seconds`, 120 by default)."""
HEALTHY_TIMEOUT_S = 120


class BootError(RuntimeError):
    """A serving host's user data failed; the message names its log."""


def upload_bundle(sim_dir: Path, outputs: dict, wheels: Path | None = None) -> wheelhouse.Wheelhouse | None:
    """The runtime bundle at s3://<models_bucket>/runtime/..., as `stratus remote` uploads it; with
    `wheels`, the wheelhouse first (unless already there) and the bundle naming it, as `--wheels` does.
    The wheelhouse uploaded (None without `wheels`).

    Raises:
        RemoteError: `wheels` holds no wheel.
    """
    s3, bucket, key = stack.client(sim_dir, "s3"), outputs["models_bucket"], outputs["kms_key_arn"]
    with tempfile.TemporaryDirectory(prefix="stratus-bundle-") as tmp:
        house = manifest = None
        if wheels is not None:
            house = wheelhouse.read_wheelhouse(wheels)
            wheelhouse.upload(s3, house, bucket, key, Path(tmp))
            manifest = house.manifest(bucket)
        bundle = Path(tmp) / "bundle.tar.gz"
        write_bundle(bundle_entries(ROOT, manifest), bundle)
        s3.upload_file(str(bundle), bucket, BUNDLE_KEY, ExtraArgs=sse_kms_args(key))
    return house


def user_data(outputs: dict, *, model_name: str) -> str:
    """A serving host's user data for the simulated stack's outputs (what `pulumi up` would render)."""
    return serving_user_data(
        region=outputs["region"],
        models_bucket=outputs["models_bucket"],
        model_name=model_name,
        port=stack.SERVING_PORT,
        token_parameter=outputs["serving_token_parameter"],
        grpc_port=stack.GRPC_PORT,
        tls_cert_parameter=outputs["serving_tls_cert_parameter"],
        tls_key_parameter=outputs["serving_tls_key_parameter"],
    )


def _balancer_dir(sim_dir: Path) -> Path:
    return Path(stack.read_sim_file(sim_dir)["balancer"]["dir"])


def host_ip(sim_dir: Path, instance_id: str) -> str:
    """The private address of serving host `instance_id`."""
    return stack.read_sim_file(sim_dir)["serving_hosts"][instance_id]["ip"]


def launch_host(sim_dir: Path, text: str) -> str:
    """Launch a serving host, boot it with user data `text`, register it with the load balancer; its id.

    Raises:
        BootError: the user data failed (the host is terminated again).
    """
    iid = stack.add_serving_host(sim_dir)
    code = host.boot(sim_dir, iid, text)
    if code != 0:
        stack.remove_serving_host(sim_dir, iid)
        raise BootError(f"{iid}: the user data exited {code}; see {Path(sim_dir) / iid / 'cloud-init-output.log'}")
    balancer.register(_balancer_dir(sim_dir), host_ip(sim_dir, iid))
    return iid


def wait_healthy(sim_dir: Path, instance_id: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
    """Wait until the load balancer finds host `instance_id` healthy (TimeoutError if it does not)."""
    balancer.wait_for(
        _balancer_dir(sim_dir),
        host_ip(sim_dir, instance_id),
        lambda t: t is not None and t["state"] == "healthy",
        "healthy",
        timeout_s,
    )


def terminate_host(sim_dir: Path, instance_id: str, drain_seconds: float = DRAIN_SECONDS) -> int | None:
    """Take host `instance_id` out as the group does: deregister, wait for its open connections (at
    most `drain_seconds`), stop its server (SIGTERM), terminate it. The server's exit status."""
    directory, ip = _balancer_dir(sim_dir), host_ip(sim_dir, instance_id)
    balancer.deregister(directory, ip)
    # After the deregistration delay the instance goes, open connections or not.
    with contextlib.suppress(TimeoutError):
        balancer.wait_for(directory, ip, lambda t: t is None, "drained", drain_seconds)
    code = host.stop_unit(SERVE_UNIT, Path(sim_dir) / instance_id)
    stack.remove_serving_host(sim_dir, instance_id)
    return code


def replace_host(sim_dir: Path, old: str, text: str, drain_seconds: float = DRAIN_SECONDS) -> tuple[str, int | None]:
    """One step of an instance refresh (launch before terminate); (the new host's id, the old server's exit status)."""
    new = launch_host(sim_dir, text)
    wait_healthy(sim_dir, new)
    return new, terminate_host(sim_dir, old, drain_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir", type=Path, help="directory of a simulated stack (scripts/sim-stack.sh up DIR)")
    parser.add_argument("--model-name", default="mlp-binary", help="model to serve (the stack's model-name)")
    parser.add_argument("--hosts", type=int, default=2, help="serving hosts to boot (the stack's serving-count)")
    parser.add_argument("--replace", metavar="ID", help="replace this serving host instead (an instance refresh step)")
    parser.add_argument(
        "--drain-seconds", type=float, default=DRAIN_SECONDS, help=f"deregistration delay (default {DRAIN_SECONDS})"
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        metavar="W",
        help="wheelhouse of `stratus wheels --cpu --dest W` for the hosts' offline install (a stack made with "
        "--real-prepare needs it: its hosts have no route out)",
    )
    args = parser.parse_args(argv)
    if problem := model_name_problem(args.model_name):
        parser.error(f"--model-name: {problem}")
    if not 1 <= args.hosts <= len(stack.SERVING_HOSTS):
        parser.error(f"--hosts: 1 to {len(stack.SERVING_HOSTS)}")
    outputs_file = args.dir / "outputs.json"
    if not outputs_file.is_file() or not (args.dir / "sim.json").is_file():
        print(f"{args.dir}: no simulated stack; create one with `scripts/sim-stack.sh up {args.dir}`", file=sys.stderr)
        return 2
    outputs = json.loads(outputs_file.read_text())
    hosts = stack.read_sim_file(args.dir)["serving_hosts"]
    if args.replace and args.replace not in hosts:
        print(f"--replace {args.replace}: not a serving host; the hosts are {sorted(hosts)}", file=sys.stderr)
        return 2
    if stack.read_sim_file(args.dir).get("real_prepare") and args.wheels is None:
        print(
            f"{args.dir} was made with --real-prepare: its serving hosts install the runtime offline; "
            "pass --wheels W (`stratus wheels --cpu --dest W`; scripts/sim-stack.sh: SIM_WHEELS=W)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.wheels is not None:
            check_wheelhouse(args.wheels, gpu=False, hosts="hosts")
        upload_bundle(args.dir, outputs, args.wheels)
    except RemoteError as e:
        print(str(e), file=sys.stderr)
        return 2
    text = user_data(outputs, model_name=args.model_name)
    try:
        if args.replace:
            started = time.monotonic()
            new, code = replace_host(args.dir, args.replace, text, args.drain_seconds)
            print(f"{args.replace} replaced by {new} in {time.monotonic() - started:.0f} s (old server exit {code})")
            return 0
        with ThreadPoolExecutor(args.hosts) as pool:
            booted = list(pool.map(lambda _: launch_host(args.dir, text), range(args.hosts)))
    except (BootError, TimeoutError) as e:
        print(str(e), file=sys.stderr)
        return 1
    print(
        f"serving hosts booted: {', '.join(booted)} behind {outputs['serving_url']} (CA: "
        f"serving_ca_certificate of {outputs_file}; journals: {args.dir}/<id>/journal/stratus-serve.service.log)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
