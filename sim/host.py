"""The boot of a simulated host: EC2 metadata, cloud-init and systemd stand-ins (`sim.stack`).

`boot(sim_dir, instance_id, user_data)` does for a host of a simulated stack what EC2 and
cloud-init do for an instance's user data:

1. an instance metadata service at 169.254.169.254:80 inside the host's network namespace
   (IMDSv2 only: a session token on PUT, then `local-ipv4` and `instance-id`; IMDSv1 gets 401);
2. the user data, run once with bash as root in the host's network and mount namespaces (the host
   paths bind-mounted as for node commands, `sim.transport.LocalTransport`), its output
   in `<host root>/cloud-init-output.log`.

`systemctl` on a simulated host (`<sim>/bin/systemctl`) runs `python -m sim.host
systemctl ...`: `daemon-reload` does nothing; `restart stratus-prepare.service` and
`enable --now [--no-block] UNIT...` start units from `/etc/systemd/system/` in the order given.
`stratus-prepare.service` is the simulated prepare (the bundle from S3 unpacked into
`/opt/stratus/app`, `.ready` written: the host runs this machine's interpreter, so nothing is
installed), or on a stack made with `--real-prepare` the real `prepare.sh` (`sim.prepare`).
Any other unit gets its `EnvironmentFile=` and `Environment=`, `StateDirectory=` and
`CacheDirectory=` (under `<host root>/var-lib` and `var-cache`), `ExecStartPre=` (must succeed)
and `ExecStart=`, whose process runs in the background with its output in
`<host root>/journal/<unit>.log`, under a supervisor that plays systemd's part (its parent; it
records `$MAINPID` and the exit status in `<host root>/units/<unit>/`). `systemctl stop UNIT`
sends SIGTERM and SIGKILL after `TimeoutStopSec=`; `systemctl reload UNIT` runs `ExecReload=`.
Not simulated: `User=` (units run as root), the sandboxing directives, `Restart=`.
The environment of a unit also carries the stack's emulator endpoint and
credentials (`env` in sim.json), as the instance profile would give them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.contract import PREPARE_UNIT
from sim import prepare as sim_prepare
from sim import stack
from sim.transport import LocalTransport

IMDS_ADDRESS = "169.254.169.254"
ENV_HOST_ROOT = "STRATUS_SIM_HOST_ROOT"
UNIT_DIR = Path("/etc/systemd/system")


def parse_service(text: str) -> dict[str, list[str]]:
    """The `[Service]` directives of a unit file: key -> values in order (repeatable keys kept)."""
    section, found = "", {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _env_file(path: str) -> dict[str, str]:
    optional = path.startswith("-")
    path = path.lstrip("-")
    if optional and not Path(path).is_file():
        return {}
    env = {}
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words and "=" in words[0]:
            key, value = words[0].split("=", 1)
            env[key] = value
    return env


def _directories(service: dict[str, list[str]], root: Path, env: dict[str, str]) -> None:
    """`StateDirectory=` / `CacheDirectory=`: host-root folders bind-mounted at /var/lib, /var/cache."""
    kinds = (("StateDirectory", "STATE_DIRECTORY", "lib"), ("CacheDirectory", "CACHE_DIRECTORY", "cache"))
    for key, var, base in kinds:
        names = [n for v in service.get(key, []) for n in v.split()]
        if not names:
            continue
        source, target = root / f"var-{base}", Path(f"/var/{base}")
        for name in names:
            (source / name).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        env[var] = ":".join(str(target / n) for n in names)


def start_unit(name: str, root: Path) -> int:
    """Start unit `name` as described in the module docstring; 0 when its main process started."""
    if name == PREPARE_UNIT:
        return sim_prepare.run() if sim_prepare.enabled() else stack.prepare()
    service = parse_service((UNIT_DIR / name).read_text())
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in ("PATH", "LANG")}
    for path in service.get("EnvironmentFile", []):
        env.update(_env_file(path))
    for value in service.get("Environment", []):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    _directories(service, root, env)
    journal = root / "journal" / f"{name}.log"
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "ab") as out:
        for pre in service.get("ExecStartPre", []):
            cmd = shlex.split(pre.lstrip("-"))
            code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0 and not pre.startswith("-"):
                print(f"{name}: ExecStartPre {pre} exited {code}; not started", file=sys.stderr)
                return 1
        (main,) = service["ExecStart"]
        state = unit_state(root, name)
        state.mkdir(parents=True, exist_ok=True)
        (state / "exit").unlink(missing_ok=True)
        (state / "main.pid").unlink(missing_ok=True)
        # The supervisor plays systemd's part for the main process: it is its parent, records its
        # pid ($MAINPID) and its exit status, and passes SIGTERM/SIGHUP on (`stop_unit`, `reload`).
        supervisor = [sys.executable, "-m", "sim.host", "unit-main", "--state", str(state), "--", *shlex.split(main)]
        proc = subprocess.Popen(
            supervisor,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    print(f"[simulated systemd] {name} started (supervisor pid {proc.pid}); journal: {journal}", file=sys.stderr)
    return 0


def unit_state(root: Path, name: str) -> Path:
    """Where the supervisor of unit `name` keeps `main.pid` and, once it ended, `exit`."""
    return root / "units" / name


def supervise(state: Path, cmd: list[str]) -> int:
    """Run a unit's main process (cwd /) as its parent; record its pid and exit status in `state`."""
    proc = subprocess.Popen(cmd, cwd="/", stdin=subprocess.DEVNULL)
    (state / "main.pid").write_text(str(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    code = proc.wait()
    (state / "exit").write_text(str(code))
    print(f"[simulated systemd] main process {proc.pid} exited, status={code}", flush=True)
    return code


def main_pid(root: Path, name: str, timeout_s: float = 10.0) -> int:
    """$MAINPID of a started unit (waits for its supervisor to start it)."""
    pid_file = unit_state(root, name) / "main.pid"
    deadline = time.monotonic() + timeout_s
    while not pid_file.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} has no main process (no {pid_file})")
        time.sleep(0.05)
    return int(pid_file.read_text())


def stop_unit(name: str, root: Path) -> int | None:
    """`systemctl stop`: SIGTERM to the main process, SIGKILL after `TimeoutStopSec=` (default 90 s);
    the main process's exit status (None: it was not running)."""
    state = unit_state(root, name)
    if not (state / "main.pid").is_file():
        return None
    if not (state / "exit").is_file():
        service = parse_service((root / "systemd" / name).read_text())
        timeout = float(service.get("TimeoutStopSec", ["90"])[-1].rstrip("s"))
        pid = main_pid(root, name)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not (state / "exit").is_file():
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)
    return int((state / "exit").read_text())


def reload_unit(name: str, root: Path) -> int:
    """`systemctl reload`: run `ExecReload=` with $MAINPID set."""
    service = parse_service((root / "systemd" / name).read_text())
    if "ExecReload" not in service:
        print(f"{name} has no ExecReload=; it cannot be reloaded", file=sys.stderr)
        return 1
    pid = str(main_pid(root, name))
    for line in service["ExecReload"]:
        if subprocess.run([w.replace("$MAINPID", pid) for w in shlex.split(line)]).returncode != 0:
            return 1
    return 0


def systemctl(args: list[str]) -> int:
    """The `systemctl` of a simulated host (see the module docstring)."""
    root = Path(os.environ.get(ENV_HOST_ROOT, "/nonexistent"))
    if args == ["daemon-reload"]:
        return 0
    if args[:1] in (["restart"], ["enable"]) and (args[0] == "restart" or "--now" in args):
        units = [a for a in args[1:] if not a.startswith("--")]
        for unit in units:
            if start_unit(unit, root) != 0:
                return 1
        return 0
    if len(args) == 2 and args[0] in ("stop", "reload"):
        if args[0] == "reload":
            return reload_unit(args[1], root)
        stop_unit(args[1], root)
        return 0
    print(f"simulated host: systemctl {shlex.join(args)} is not simulated", file=sys.stderr)
    return 1


def serve_imds(instance_id: str, local_ipv4: str, ready: Path) -> None:
    """The metadata service of one simulated host (IMDSv2 only), on 169.254.169.254:80 in its namespace."""
    import secrets
    from http.server import BaseHTTPRequestHandler, HTTPServer

    tokens: set[str] = set()
    meta = {"/latest/meta-data/local-ipv4": local_ipv4, "/latest/meta-data/instance-id": instance_id}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                self.send_error(400)
                return
            tokens.add(token := secrets.token_hex(16))
            self._reply(token)

        def do_GET(self) -> None:  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                self.send_error(401)
            elif self.path in meta:
                self._reply(meta[self.path])
            else:
                self.send_error(404)

        def _reply(self, text: str) -> None:
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HTTPServer((IMDS_ADDRESS, 80), Handler)
    ready.write_text(str(os.getpid()))
    server.serve_forever()


def start_imds(transport: LocalTransport, instance_id: str, timeout_s: float = 30.0) -> int:
    """Put 169.254.169.254 on the host namespace's loopback and start its metadata service; its pid."""
    host = transport.node(instance_id)
    root = Path(host["root"])
    ready = root / "imds.ready"
    ready.unlink(missing_ok=True)
    subprocess.run(["ip", "-n", host["netns"], "addr", "replace", f"{IMDS_ADDRESS}/32", "dev", "lo"], check=True)
    repo = Path(__file__).resolve().parents[1]
    cmd = [
        "ip",
        "netns",
        "exec",
        host["netns"],
        sys.executable,
        "-m",
        "sim.host",
        "imds",
        "--instance-id",
        instance_id,
        "--local-ipv4",
        host["ip"],
        "--ready",
        str(ready),
    ]
    with open(root / "imds.log", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the metadata service of {instance_id} did not start; see {root / 'imds.log'}")
        time.sleep(0.1)
    return proc.pid


def boot(sim_dir: Path, instance_id: str, user_data: str, *, timeout_s: float = 600.0) -> int:
    """Boot simulated host `instance_id` with `user_data` (see the module docstring); its exit status."""
    transport = LocalTransport(Path(sim_dir))
    root = Path(transport.node(instance_id)["root"])
    start_imds(transport, instance_id)
    script = root / "user-data"
    script.write_text(user_data)
    env = {
        "PATH": f"{transport.sim['bin']}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        **transport.sim["env"],
        ENV_HOST_ROOT: str(root),
    }
    with open(root / "cloud-init-output.log", "ab") as out:
        cmd = transport.command_line(instance_id, script, shell="bash")  # noqa: S604 - cloud-init runs user data with bash
        proc = subprocess.run(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout_s
        )
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["systemctl"]:
        return systemctl(argv[1:])
    if argv[:1] == ["unit-main"] and argv[2:4] and argv[3] == "--":
        return supervise(Path(argv[2]), argv[4:])
    parser = argparse.ArgumentParser(
        prog="python -m sim.host",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("imds",))
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--local-ipv4", required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args(argv)
    serve_imds(args.instance_id, args.local_ipv4, args.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
