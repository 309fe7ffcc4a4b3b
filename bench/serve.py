"""Serving benchmark: `stratus serve` vs KServe's own model server, over HTTP (JSON, binary) and gRPC,
and what TLS costs stratus.

    # the full table (~14 min); heavy, so take the shared CPU lock
    flock /tmp/stratus-cpu.lock env PYTHONPATH=. .venv/bin/python bench/serve.py
    PYTHONPATH=. .venv/bin/python bench/serve.py --duration 1 --rounds 1    # quicker, noisier
    # the TLS cost alone (plain and TLS stratus only, ~6 min)
    flock /tmp/stratus-cpu.lock env PYTHONPATH=. .venv/bin/python bench/serve.py \
        --servers stratus,stratus+tls --batches 1 --concurrency 1,16 --rounds 5

Needs `wrk` and `h2load` (`apt-get install wrk nghttp2-client`). The KServe peer runs in its own virtualenv
(.venv/bench-kserve, built from bench/kserve-requirements.txt on first use, a few minutes).

Model: the `mlp-binary` preset (1000 -> Dense(100, ReLU) -> Dense(1, sigmoid)) exported to ONNX
(fp32, random weights: serving cost does not depend on the values) and published to a temporary
local repository; `--repo DIR --model NAME` measures an existing one.

Servers (`--servers`, default all), each one process with one worker on 127.0.0.1
(bench/_serve_servers.py): `stratus` (`python -m runtime serve` as deployed, HTTP and
`--grpc-port`, plaintext through `--insecure-plain-http`), `stratus+tls` (the same command and
settings with `--tls-cert/--tls-key`: HTTPS and gRPC over TLS with a server certificate for
127.0.0.1 from a throwaway CA made at bench time, sim/pki.py, key mode 600),
`kserve` (KServe's `ModelServer` + a `kserve.Model` on the same ONNX file, same ONNX Runtime
threading, REST and gRPC), `bare` (the same ASGI stack and decoder returning a fixed tensor: the
protocol's ceiling), `bare+model` (`bare` that also runs the model with stratus's ONNX Runtime
options: the ceiling of a server that runs the model; both bare servers answer gRPC too, on the
same `grpc.aio` stack and decoder as stratus; `bare+model/KServe` is the most any server on that
stack could gain) and `before` (`stratus serve` from `--before REF`, the code before the HTTP
front's limits: what the limits cost). A column shows when the servers it compares were selected;
`tls/plain` is `stratus+tls` req/s over `stratus` req/s.

Load (bench/_serve_load.py): HTTP through wrk, gRPC through h2load, each with one thread and
`conc` connections, kept open for the whole measurement (over TLS each connection's handshake is
paid once, amortized over thousands of requests; h2load negotiates h2 through ALPN, checked).
Before each gRPC measurement one call through a real gRPC client (TLS credentials with the CA for
`stratus+tls`) checks that the server answers; the negotiated TLS version and cipher of both
ports are printed. For each cell the servers run back to back (their order rotating per round),
`--rounds` times; the table shows the median. Load generator and servers share the machine's
cores. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import _serve_load as load  # bench/ is sys.path[0] when this file runs
import _serve_servers as servers

from runtime.common.net import free_port
from sim.pki import LocalCA  # the throwaway CA of the TLS tests and the simulated stack

TOKEN = "bench-token-0123456789abcdef0123456789"  # noqa: S105 (a throwaway loopback token)
MODEL = "mlp-binary"
BEFORE = "f6ce8c2"  # the last commit before the HTTP front (runtime/serve/front.py)
SERVERS = ("stratus", "stratus+tls", "kserve", "bare", "bare+model", "before")
GRPC_SERVERS = tuple(n for n in SERVERS if n != "before")  # the code of --before has no gRPC port
AUTH_SERVERS = ("stratus", "stratus+tls", "before")  # the ones that want the bearer token


def _build_repo(root: Path, num_features: int) -> str:
    import torch

    from runtime.repository.artifact import write_manifest
    from runtime.repository.publish import publish
    from runtime.train.models import WithSigmoid, build_mlp
    from runtime.train.presets import mlp_binary

    cfg = mlp_binary()
    model = WithSigmoid(build_mlp(num_features, cfg.model)).eval()
    staged = root / "staged"
    staged.mkdir()
    torch.onnx.export(
        model,
        (torch.zeros(1, num_features),),
        str(staged / "model.onnx"),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    io = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, num_features]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
    }
    write_manifest(staged, {"model_name": MODEL, **io, "provenance": {"bench": "random weights"}})
    repo = root / "repo"
    publish(staged, str(repo), model_name=MODEL)
    return str(repo)


def _start_all(args, selected: list[str], repo: str, root: Path, log) -> dict[str, servers.Running]:
    token_file = root / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    common = ["--repo", repo, "--model", args.model, "--token-file", str(token_file), "--poll-interval", "60"]
    py = sys.executable
    running: dict[str, servers.Running] = {}
    model_file = Path(repo) / args.model / "1" / "model.onnx"
    for name in selected:
        port, gport = free_port(), free_port()
        stratus = [py, "-m", "runtime", "serve", *common, "--port", str(port), "--grpc-port", str(gport)]
        if name == "stratus":  # the plaintext rows (the code of --before has no such flag)
            running[name] = servers.start(name, [*stratus, "--insecure-plain-http"], log, port, gport)
        elif name == "stratus+tls":  # the same process settings, TLS on both ports
            ca = LocalCA.create(root / "pki", name="stratus bench CA")
            pair = ca.issue(root / "pki" / "server", common_name="stratus bench server")  # key mode 600
            tls = ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
            running[name] = servers.start(name, [*stratus, *tls], log, port, gport, ca=ca.cert_path)
        elif name == "before":
            before = servers.checkout(args.before, root / "before")
            cmd = [py, "-m", "runtime", "serve", *common, "--port", str(port)]
            running[name] = servers.start(name, cmd, log, port, cwd=before, pythonpath=before)
        elif name in ("bare", "bare+model"):
            cmd = [py, str(Path(servers.__file__)), "--port", str(port), "--grpc-port", str(gport)]
            cmd += ["--num-features", str(args.num_features), "--model", args.model]
            cmd += ["--model-file", str(model_file)] if name == "bare+model" else []
            running[name] = servers.start(name, cmd, log, port, gport)
        else:
            kpy = servers.ensure_kserve_venv()
            cmd = [str(kpy), str(Path(__file__).with_name("_kserve_model.py")), "--model-file", str(model_file)]
            cmd += ["--name", args.model, "--http_port", str(port), "--grpc_port", str(gport)]
            running[name] = servers.start(name, cmd, log, port, gport)
    for name, server in running.items():
        ready = "/" if name.startswith("bare") else "/v2/health/ready"
        servers.wait_ready(server, ready, TOKEN if name in AUTH_SERVERS else None)
    return running


def _tls_sessions(running: dict[str, servers.Running]) -> str:
    """What each TLS port negotiates with a default client (the gRPC port with ALPN h2)."""
    parts = []
    for name, server in running.items():
        if server.ca:
            parts.append(f"{name} HTTP {load.tls_session(server.http_port, server.ca)}")
            parts.append(f"{name} gRPC {load.tls_session(server.grpc_port, server.ca, alpn='h2')}")
    return "; ".join(parts)


def _measure(name: str, server: servers.Running, mode: str, batch: int, conc: int, args, tmp: Path) -> dict:
    token = TOKEN if name in AUTH_SERVERS else ""
    if mode == "gRPC":
        shape = (batch, args.num_features, conc, args.warmup, args.duration)
        return load.run_h2load(server.grpc_port, token, args.model, *shape, tmp, ca=server.ca)
    body, headers = load.request_body(batch, args.num_features, binary=mode == "binary")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    url = server.url(f"/v2/models/{args.model}/infer")
    return load.run_wrk(url, body, headers, conc, args.warmup, args.duration, tmp)


def _median(samples: list[dict]) -> dict:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def machine() -> str:
    """CPU model, cores and vector extensions (from /proc/cpuinfo), and the load average."""
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    wanted = ("aes", "vaes")  # AES-NI and its vector form: what TLS's AES-GCM runs on
    wanted += ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
    vector = " ".join(f for f in wanted if f in flags)
    load1 = os.getloadavg()[0]
    return f"{model}, {os.cpu_count()} cores, {vector}; load average {load1:.1f} at start"


def _rps(x: dict | None) -> str:
    return f"{x['rps']:,.0f}" if x else "-"


def _ms(key: str):
    return lambda x: f"{x[key]:.2f}" if x else "-"


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['rps'] / b['rps']:.2f}" if a and b and b["rps"] else "-"


# (header, the servers it needs, its text from a cell {server: median sample}); a column shows
# only when every server it needs was selected.
COLUMNS = [
    ("stratus req/s", ("stratus",), lambda c: _rps(c.get("stratus"))),
    ("p50 ms", ("stratus",), lambda c: _ms("p50_ms")(c.get("stratus"))),
    ("p99 ms", ("stratus",), lambda c: _ms("p99_ms")(c.get("stratus"))),
    ("KServe req/s", ("kserve",), lambda c: _rps(c.get("kserve"))),
    ("p50 ms", ("kserve",), lambda c: _ms("p50_ms")(c.get("kserve"))),
    ("p99 ms", ("kserve",), lambda c: _ms("p99_ms")(c.get("kserve"))),
    ("stratus/KServe", ("stratus", "kserve"), lambda c: _ratio(c.get("stratus"), c.get("kserve"))),
    ("bare req/s", ("bare",), lambda c: _rps(c.get("bare"))),
    ("stratus/bare", ("stratus", "bare"), lambda c: _ratio(c.get("stratus"), c.get("bare"))),
    ("bare+model req/s", ("bare+model",), lambda c: _rps(c.get("bare+model"))),
    ("stratus/bare+model", ("stratus", "bare+model"), lambda c: _ratio(c.get("stratus"), c.get("bare+model"))),
    ("bare+model/KServe", ("bare+model", "kserve"), lambda c: _ratio(c.get("bare+model"), c.get("kserve"))),
    ("before req/s", ("before",), lambda c: _rps(c.get("before"))),
    ("stratus/before", ("stratus", "before"), lambda c: _ratio(c.get("stratus"), c.get("before"))),
    ("stratus+tls req/s", ("stratus+tls",), lambda c: _rps(c.get("stratus+tls"))),
    ("p50 ms", ("stratus+tls",), lambda c: _ms("p50_ms")(c.get("stratus+tls"))),
    ("p99 ms", ("stratus+tls",), lambda c: _ms("p99_ms")(c.get("stratus+tls"))),
    ("tls/plain", ("stratus+tls", "stratus"), lambda c: _ratio(c.get("stratus+tls"), c.get("stratus"))),
    ("errors", (), lambda c: str(int(sum(r["errors"] for r in c.values())))),
]


def _table(selected: list[str], modes, batches, concurrencies, samples: dict[tuple, list[dict]]) -> list[str]:
    columns = [col for col in COLUMNS if all(n in selected for n in col[1])]
    lines = ["| " + " | ".join(["mode", "batch", "conc."] + [col[0] for col in columns]) + " |"]
    lines.append("|---|" + "---:|" * (len(columns) + 2))
    for mode in modes:
        for batch in batches:
            for conc in concurrencies:
                cell = {n: _median(v) for (m, b, c, n), v in samples.items() if (m, b, c) == (mode, batch, conc)}
                lines.append(
                    "| " + " | ".join([mode, str(batch), str(conc)] + [col[2](cell) for col in columns]) + " |"
                )
    return lines


def _selected(args, parser) -> list[str]:
    selected = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in selected if n not in SERVERS]
    if unknown or not selected:
        parser.error(f"--servers {args.servers!r}: unknown {unknown}; choose from {','.join(SERVERS)}")
    if not args.before:
        selected = [n for n in selected if n != "before"]
    return selected


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", help="existing model repository (default: build mlp-binary into a temp dir)")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--num-features", type=int, default=1000)
    p.add_argument("--duration", type=int, default=4, help="measured seconds per cell and server (wrk: whole seconds)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured seconds before each measurement (0: none)")
    p.add_argument("--rounds", type=int, default=2, help="repetitions of the whole grid (median shown)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--modes", default="JSON,binary,gRPC")
    p.add_argument("--before", default=BEFORE, help="git ref of the 'before' server ('' to skip it)")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated servers to start and measure (e.g. 'stratus,stratus+tls' for the TLS cost alone)",
    )
    p.add_argument("--json-out", help="also write every measurement to this JSON file")
    args = p.parse_args()
    selected = _selected(args, p)
    batches = [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    host = machine()  # the load average before the servers start
    print(f"machine: {host}", file=sys.stderr)
    samples: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        repo = args.repo or _build_repo(root, args.num_features)
        with open(root / "servers.log", "wb") as log:
            running = _start_all(args, selected, repo, root, log)
            try:
                tls = _tls_sessions(running)
                if tls:
                    print(f"TLS: {tls}", file=sys.stderr)
                for rnd in range(args.rounds):
                    for mode in modes:
                        names = [n for n in (GRPC_SERVERS if mode == "gRPC" else SERVERS) if n in running]
                        names = names[rnd % len(names) :] + names[: rnd % len(names)]
                        for batch in batches:
                            for conc in concurrencies:
                                got = []
                                for name in names:
                                    result = _measure(name, running[name], mode, batch, conc, args, root)
                                    samples.setdefault((mode, batch, conc, name), []).append(result)
                                    got.append(f"{name} {result['rps']:,.0f}")
                                line = f"{mode} b={batch} c={conc}: {', '.join(got)} req/s"
                                print(f"  round {rnd + 1}: {line}", file=sys.stderr)
            finally:
                servers.stop(list(running.values()))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([[*k, v] for k, v in samples.items()], indent=1))
    print(f"\nmachine: {host}; {args.duration:g} s per cell and server, median of {args.rounds} rounds")
    if tls:
        print(f"TLS negotiated with a default client: {tls}")
    print()
    print("\n".join(_table(selected, modes, batches, concurrencies, samples)))


if __name__ == "__main__":
    main()
