"""Linux network namespaces and processes of the simulated stack: create, list, kill, remove.

Every name the simulator makes starts with a prefix (`sim.stack.PREFIX`, `stsimt` in tests), so a
killed run's leftovers can be found and removed (`remove_leftovers`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PREFIX = "stsim"
"""Of every namespace and link the simulator makes."""
NETNS_ETC = Path("/etc/netns")


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def free_subnet() -> ipaddress.IPv4Network:
    used = run_ip("-4", "-o", "addr").stdout
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.231.{secrets.randbelow(250) + 1}.0/24")
        if f" {str(net.network_address)[:-1]}" not in used:
            return net
    raise RuntimeError("no free 10.231.X.0/24 subnet for the simulated stack")


def add_namespace(sim: dict[str, Any], name: str, ip: str, index: int) -> None:
    bridge, sfx = sim["bridge"], sim["suffix"]
    host_if = f"{PREFIX}{sfx}v{index}"
    run_ip("netns", "add", name)
    sim["namespaces"].append(name)
    run_ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
    run_ip("link", "set", host_if, "master", bridge, "up")
    run_ip("-n", name, "addr", "add", f"{ip}/{sim['prefixlen']}", "dev", "eth0")
    run_ip("-n", name, "link", "set", "eth0", "up")
    run_ip("-n", name, "link", "set", "lo", "up")
    # `ip netns exec` mounts /etc/netns/<name>/* over /etc: no DNS server is reachable from the
    # bridge, so name lookups (gloo and c10d resolve peers) must fail fast, and names come from hosts.
    etc = NETNS_ETC / name
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("# simulated node: no DNS\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{ip} {socket.gethostname()}\n")


def kill(pids: list[int], *, graceful: bool = True) -> None:
    """SIGTERM, up to 5 s, then SIGKILL (`graceful=False`: SIGKILL at once, as a lost machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL) if graceful else (signal.SIGKILL,):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 5
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not_zombie(p)]
            time.sleep(0.1)
        if not alive:
            return


def not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def remove_namespace(name: str, *, graceful: bool = True) -> None:
    """Kill every process in the namespace (`kill`), then delete it (its veth goes with it)."""
    pids = [int(p) for p in run_ip("netns", "pids", name, check=False).stdout.split()]
    kill(pids, graceful=graceful)
    run_ip("netns", "delete", name, check=False)
    shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def remove_leftovers(prefix: str) -> list[str]:
    """Delete every namespace and link whose name starts with `prefix` (left by a killed run)."""
    gone = []
    for name in run_ip("netns", "list", check=False).stdout.split():
        if name.startswith(prefix):
            remove_namespace(name)
            gone.append(name)
    for line in run_ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            run_ip("link", "delete", name, check=False)
            gone.append(name)
    return gone
