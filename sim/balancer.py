"""The simulated stack's load balancer: a TCP pass-through stand-in for the internal NLB.

    python -m sim.balancer --listen 10.231.7.19 --port 8080 --port 8001 --dir /tmp/sim/balancer

What the stack's Network Load Balancer does for the serving hosts (`infra/components/balancer.py`),
on the simulated stack's bridge, in its own network namespace:

- **TCP listeners, TLS passed through**: each connection to `<listen>:<port>` is relayed byte for
  byte to the same port of one target; TLS ends on the host, the stand-in never decrypts.
- **Round robin** over the targets that are registered and healthy (new connections only; a
  connection stays on its target for its whole life, as on an NLB).
- **Health checks on readiness**: `GET /v2/health/ready` over HTTPS on `--health-port` (the
  certificate is not verified, as an NLB's HTTPS health check does not), every `--interval`
  seconds; a target turns healthy after `HEALTHY_THRESHOLD` answers of 200 in a row and unhealthy
  after `UNHEALTHY_THRESHOLD` other outcomes in a row. The NLB checks every 10 s; the stand-in
  checks every second by default so that tests wait less (the thresholds are the stack's).
- **Registration and deregistration**: `register(dir, ip)` / `deregister(dir, ip)` rewrite
  `<dir>/targets.json`, which the stand-in rereads at every check, as an Auto Scaling group
  registers a new instance and deregisters one it terminates. A deregistered target gets no new
  connection; its open connections run on (`draining` in the state) until they close, as during
  the NLB's deregistration delay.

`<dir>/state.json` (rewritten at every check and connection change) shows each target's state
(`initial`, `healthy`, `unhealthy`, `draining`), its open connections and the connections it got.
With no healthy target a new connection is closed at once (the client sees a reset).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.components.balancer import HEALTHY_THRESHOLD, READINESS_PATH, UNHEALTHY_THRESHOLD

TARGETS_FILE = "targets.json"
STATE_FILE = "state.json"
READY_FILE = "ready"
_CHUNK = 65536


@dataclass
class Target:
    """One target's health and connection counts, as `state.json` shows it."""

    state: str = "initial"
    active: int = 0
    """Connections open now."""
    connections: int = 0
    """Connections routed to it since it was registered."""
    registered: bool = True
    streak: int = 0
    """Consecutive health-check outcomes that disagree with `state` (positive: passes)."""


class Balancer:
    """The stand-in's event loop side: listeners, health checks, the state file."""

    def __init__(self, listen: str, ports: list[int], health_port: int, directory: Path, interval: float):
        self.listen, self.ports, self.health_port = listen, ports, health_port
        self.dir, self.interval = directory, interval
        self.targets: dict[str, Target] = {}
        self.next = 0
        # An NLB's HTTPS health check does not validate the certificate (it checks that TLS and
        # the route answer); the traffic itself stays end-to-end verified by the clients.
        self.health_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.health_tls.check_hostname = False
        self.health_tls.verify_mode = ssl.CERT_NONE

    # --- targets -------------------------------------------------------------------------------

    def reload_targets(self) -> None:
        try:
            wanted = json.loads((self.dir / TARGETS_FILE).read_text())["targets"]
        except (OSError, ValueError, KeyError):
            wanted = []
        for ip in wanted:
            target = self.targets.get(ip)
            if target is None or not target.registered:
                self.targets[ip] = Target()  # (re)registered: health starts over
        for ip, target in list(self.targets.items()):
            if ip not in wanted:
                target.registered = False
                target.state = "draining"
                if target.active == 0:
                    del self.targets[ip]

    def pick(self) -> str | None:
        healthy = [ip for ip, t in self.targets.items() if t.registered and t.state == "healthy"]
        if not healthy:
            return None
        self.next += 1
        return healthy[self.next % len(healthy)]

    def write_state(self) -> None:
        tmp = self.dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps({"time": time.time(), "targets": {ip: asdict(t) for ip, t in self.targets.items()}}))
        tmp.replace(self.dir / STATE_FILE)

    # --- health checks -------------------------------------------------------------------------

    async def check(self, ip: str) -> bool:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ip, self.health_port, ssl=self.health_tls), timeout=2
            )
            writer.write(f"GET {READINESS_PATH} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
            status = await asyncio.wait_for(reader.readline(), timeout=2)
            return status.split()[1:2] == [b"200"]
        except (OSError, TimeoutError, ssl.SSLError, IndexError):
            return False
        finally:
            if writer is not None:
                writer.close()

    async def health_loop(self) -> None:
        while True:
            self.reload_targets()
            checked = [ip for ip, t in self.targets.items() if t.registered]
            results = await asyncio.gather(*(self.check(ip) for ip in checked))
            for ip, ok in zip(checked, results, strict=True):
                target = self.targets.get(ip)
                if target is None or not target.registered:
                    continue
                healthy = target.state == "healthy"
                if ok == healthy:
                    target.streak = 0
                    continue
                target.streak += 1
                if ok and target.streak >= HEALTHY_THRESHOLD:
                    target.state, target.streak = "healthy", 0
                elif not ok and target.streak >= (UNHEALTHY_THRESHOLD if healthy else 1):
                    target.state, target.streak = "unhealthy", 0
            self.write_state()
            await asyncio.sleep(self.interval)

    # --- the data path -------------------------------------------------------------------------

    async def relay(self, client_r, client_w, port: int) -> None:
        ip = self.pick()
        if ip is None:
            client_w.transport.abort()
            return
        target = self.targets[ip]
        target.active += 1
        target.connections += 1
        self.write_state()
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=5)
        except (OSError, TimeoutError):
            client_w.transport.abort()
            self._closed(ip)
            return

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(_CHUNK):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                if dst.can_write_eof():
                    with contextlib.suppress(OSError):
                        dst.write_eof()

        try:
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        finally:
            for w in (client_w, server_w):
                w.close()
            self._closed(ip)

    def _closed(self, ip: str) -> None:
        target = self.targets.get(ip)
        if target is not None:
            target.active -= 1
            if not target.registered and target.active == 0:
                del self.targets[ip]
        self.write_state()

    async def run(self) -> None:
        servers = []
        for port in self.ports:

            async def handle(r, w, port=port) -> None:
                await self.relay(r, w, port)

            servers.append(await asyncio.start_server(handle, self.listen, port))
        (self.dir / READY_FILE).write_text(str(os.getpid()))
        await self.health_loop()


# --- control, from the simulated stack's side -------------------------------------------------------


def _targets(directory: Path) -> list[str]:
    try:
        return list(json.loads((directory / TARGETS_FILE).read_text())["targets"])
    except (OSError, ValueError, KeyError):
        return []


def _write_targets(directory: Path, targets: list[str]) -> None:
    tmp = directory / f".{TARGETS_FILE}.tmp"
    tmp.write_text(json.dumps({"targets": targets}))
    tmp.replace(directory / TARGETS_FILE)


def register(directory: Path, ip: str) -> None:
    """Add a target (an Auto Scaling group attaching a new instance to the target groups)."""
    if ip not in (targets := _targets(directory)):
        _write_targets(directory, [*targets, ip])


def deregister(directory: Path, ip: str) -> None:
    """Remove a target: no new connections; open ones run on until they close."""
    _write_targets(directory, [t for t in _targets(directory) if t != ip])


def state(directory: Path) -> dict[str, dict]:
    """The targets of `state.json` (ip -> state, active, connections, registered)."""
    try:
        return json.loads((directory / STATE_FILE).read_text())["targets"]
    except (OSError, ValueError, KeyError):
        return {}


def wait_for(directory: Path, ip: str, predicate, what: str, timeout_s: float) -> dict:
    """Poll `state.json` until `predicate(target or None)` holds; the target's entry (or {})."""
    deadline = time.monotonic() + timeout_s
    while True:
        target = state(directory).get(ip)
        if predicate(target):
            return target or {}
        if time.monotonic() > deadline:
            raise TimeoutError(f"load balancer target {ip} did not become {what} within {timeout_s:.0f} s: {target}")
        time.sleep(0.2)


def start(directory: Path, netns: str, listen: str, ports: list[int], health_port: int, interval: float = 1.0) -> int:
    """Start the stand-in in network namespace `netns`; its pid once it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / READY_FILE).unlink(missing_ok=True)
    repo = Path(__file__).resolve().parents[1]
    cmd = ["ip", "netns", "exec", netns, sys.executable, "-m", "sim.balancer", "--listen", listen]
    cmd += [a for p in ports for a in ("--port", str(p))]
    cmd += ["--health-port", str(health_port), "--dir", str(directory), "--interval", str(interval)]
    with open(directory / "balancer.log", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (directory / READY_FILE).is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the load balancer stand-in did not start; see {directory / 'balancer.log'}")
        time.sleep(0.1)
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.balancer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, help="address to listen on (the balancer's own)")
    parser.add_argument("--port", type=int, action="append", required=True, help="a listener port (repeat)")
    parser.add_argument("--health-port", type=int, required=True, help="port of the HTTPS readiness check")
    parser.add_argument("--dir", type=Path, required=True, help="directory of targets.json and state.json")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between health checks (default 1)")
    args = parser.parse_args(argv)
    balancer = Balancer(args.listen, args.port, args.health_port, args.dir, args.interval)
    asyncio.run(balancer.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
