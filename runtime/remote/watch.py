"""The spot-interruption watcher each training node runs beside training.

The node script (`runtime.remote.nodes`) starts it in the background:

    python -m runtime.remote.watch --pid $$ --interval 2

Every `--interval` seconds it asks the instance metadata service, IMDSv2 only (a session token
from `PUT /latest/api/token`, then `GET /latest/meta-data/spot/instance-action`; 404 means no
notice). On a notice (EC2 gives two minutes) it sends SIGTERM to the training ranks under
`--pid` (the node script's shell): they finish the step, commit a checkpoint, stream it to S3 and
exit 75 (`runtime.train.signals`). It exits when `--pid` is gone. Without `--endpoint` it polls
`NodeEnv.imds_endpoint`: `STRATUS_IMDS_ENDPOINT` in `/etc/stratus/node.env` (or the environment)
points it elsewhere (simulated nodes: a stand-in server).

Exit codes: 0 the node script ended (or a notice was acted on); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
import urllib.error
import urllib.request

import psutil

from runtime.common.log import get_logger
from runtime.common.nodeenv import node_env

TOKEN_TTL_S = 300
log = get_logger()


def instance_action(endpoint: str, timeout_s: float = 2.0) -> str | None:
    """The body of the spot instance-action notice, or None when there is none (404).

    Raises:
        OSError: the metadata service cannot be reached or refuses the token.
    """
    if not endpoint.startswith("http://"):
        raise ValueError(f"--endpoint {endpoint!r}: the metadata service is plain http://, e.g. http://169.254.169.254")
    base = endpoint.rstrip("/")
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}
    req = urllib.request.Request(f"{base}/latest/api/token", method="PUT", headers=ttl)  # noqa: S310 - http only
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the configured IMDS endpoint
        token = resp.read().decode()
    action = f"{base}/latest/meta-data/spot/instance-action"
    req = urllib.request.Request(action, headers={"X-aws-ec2-metadata-token": token})  # noqa: S310 - http only
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def rank_processes(root: psutil.Process) -> list[psutil.Process]:
    """Training ranks under `root`: `runtime.train` processes started with `--local_rank`."""
    ranks = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "runtime.train" in cmd and any(a.startswith("--local_rank") for a in cmd):
                ranks.append(child)
    return ranks


def watch(pid: int, endpoint: str, interval_s: float) -> int:
    """Poll until a notice arrives (SIGTERM the ranks) or `pid` ends."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return 0
    failures = 0
    while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
        try:
            notice = instance_action(endpoint)
            failures = 0
        except OSError as e:
            failures += 1
            if failures in (1, 10, 100):
                log.warning("instance metadata at %s unreachable (%s); still watching", endpoint, e)
            notice = None
        ranks = rank_processes(root) if notice is not None else []
        if ranks:  # a notice before the ranks started is acted on once they are up
            log.warning(
                "spot interruption notice (%s): SIGTERM to %d rank(s); they commit, upload and exit 75",
                notice.strip()[:200],
                len(ranks),
            )
            for rank in ranks:
                with contextlib.suppress(psutil.Error):
                    rank.send_signal(signal.SIGTERM)
            return 0
        time.sleep(interval_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.remote.watch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pid", type=int, required=True, help="the node script's shell; ranks are under it")
    parser.add_argument(
        "--endpoint", default=None, help="instance metadata service (default: the node's STRATUS_IMDS_ENDPOINT)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    args = parser.parse_args(argv)
    return watch(args.pid, args.endpoint or node_env().imds_endpoint, args.interval)


if __name__ == "__main__":
    sys.exit(main())
