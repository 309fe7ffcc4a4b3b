"""`stratus serve`: authenticated Open Inference Protocol (KServe v2) server, over TLS.

    # local repository, token from a file (chmod 600), a certificate and key (PEM)
    stratus serve --repo runs/model-repo --model mlp-binary --token-file ~/.stratus-token \\
        --tls-cert server.pem --tls-key server.key
    # the stack's serving host (the systemd unit written by the stack's user data)
    stratus serve --repo s3://<models_bucket>/models --model mlp-binary \\
        --host <private ip> --port 8000 --token-ssm-parameter <serving_token_parameter> \\
        --tls-cert-ssm-parameter <certificate parameter> --tls-key-ssm-parameter <key parameter>
    # local use only: plain HTTP and plaintext gRPC, logged as a warning at start
    stratus serve --repo runs/model-repo --model mlp-binary --token-file ~/.stratus-token --insecure-plain-http

    # also the protocol over gRPC (inference.GRPCInferenceService, the token in metadata)
    stratus serve ... --grpc-port 8001

TLS (runtime.serve.tls) is on by default: without --tls-cert/--tls-key,
--tls-cert-ssm-parameter/--tls-key-ssm-parameter or an explicit --insecure-plain-http the server
refuses to start. HTTPS and gRPC share the certificate; TLS 1.2 and 1.3 only, ECDHE + AEAD
ciphers. The files are checked at start (readable, PEM, key not encrypted and not readable by
other users, key matching the certificate, certificate valid now): each problem exits 2 naming
the file and the fix. Clients verify with the CA (`curl --cacert ca.pem`, tritonclient
`ssl=True` with the CA file, grpc `ssl_channel_credentials(root_certificates=...)`).

Routes: GET /v2/health/live and /v2/health/ready (the only ones without the token: the load
balancer's health check sends none), /v2,
/v2/models/{name}[/versions/{v}], .../ready, .../config, POST .../infer (JSON or the binary tensor
extension), GET /metrics (Prometheus); HEAD wherever GET. Language models add POST
/v2/models/{name}/generate and .../generate_stream (server-sent events) and the OpenAI API
(runtime.serve.openai_api: GET /v1/models, POST /v1/completions, POST /v1/chat/completions; point
an OpenAI client at base_url https://HOST:PORT/v1 with the token as its API key), capped by
--generate-max-tokens, --generate-timeout and --generate-max-concurrency (a request waits up to
--generate-queue-timeout for a slot, then 503). Every route but liveness and readiness needs exactly one
`Authorization: Bearer` header.

Limits before authentication (runtime.serve.front): --header-timeout for a request's head,
--keepalive-timeout between requests, 414/431 over --max-request-line-bytes/--max-header-bytes,
--max-connections-per-client and --max-connections (at the cap the longest-idle connection is
closed for the new one). After it: --max-body-bytes (413), --body-timeout (408), and
--max-inflight-body-bytes for all bodies together (503 + Retry-After). Refusals are counted in
`stratus_rejections_total{reason}` and logged. The soft open-files limit is raised to fit
--max-connections (exit 2 if the hard limit is lower).

The token comes from exactly one of `--token-file PATH`, the environment variable
STRATUS_SERVE_TOKEN, or `--token-ssm-parameter NAME` (SSM SecureString, read with decryption);
never from a command-line value. Without one the server refuses to start. `kill -HUP <pid>`
re-reads it and the TLS certificate and key from the same sources (rotation without a restart:
new connections use the new certificate on both ports; a refused one keeps the current one).

SIGTERM drains (runtime.serve.drain): not ready at once (/v2/health/ready 503, gRPC ServerReady
false), no new connections, requests in flight (streamed generations too) finish within
--drain-timeout (then cancelled), exit 0.

The server is live at once and ready only after a verified version answered a warm-up; it polls
`<repo>/<model>/LATEST` every --poll-interval seconds and swaps in new versions atomically.
Logs are JSON lines on stderr; access-log lines have "logger": "stratus.access" and are written
in batches every 0.2 s.
Exit codes (docs/architecture.md): 0 stopped by SIGTERM/SIGINT after the drain (logging "stopped after
N s"); 2 bad options, no usable token, no TLS material (or a refused certificate or key) without
--insecure-plain-http, or too low an open-files hard limit.
(`python -m runtime serve ...` is the same command without the console script.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import orjson

from runtime.common.options import parse_options
from runtime.contract import ExitCode
from runtime.repository.store import open_repo
from runtime.serve.auth import TOKEN_ENV, TokenError, load_token
from runtime.serve.config import ServeConfig
from runtime.serve.tls import Certificates, TlsError, TlsMaterial, load_material

log = logging.getLogger("stratus.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the same shape as the access log's lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_app(cfg: ServeConfig, token: str):
    """The HTTP adapter (its `plane` the data plane every protocol shares) and the HTTP front for
    `cfg` (nothing started yet)."""
    from runtime.serve import openai_api
    from runtime.serve.app import ServeApp
    from runtime.serve.auth import Authenticator
    from runtime.serve.body import BodyBudget, DecodePool, Sweep
    from runtime.serve.dataplane import DataPlane
    from runtime.serve.front import Front, FrontLimits
    from runtime.serve.generate import Generate, GenerateLimits
    from runtime.serve.metrics import AccessLog, Metrics
    from runtime.serve.model import ModelManager
    from runtime.serve.protocol import Limits

    metrics = Metrics()
    sweep = Sweep()  # one timer for the front's deadlines and the app's body deadlines
    manager = ModelManager(
        open_repo(cfg.repo),
        cfg.model,
        poll_interval=cfg.poll_interval,
        max_batch_size=cfg.max_batch_size,
        intra_op_threads=cfg.intra_op_threads,
        generate_batch=cfg.generate_max_concurrency,
        on_event=metrics.on_model_event,
    )
    plane = DataPlane(
        manager,
        Authenticator(token),
        metrics,
        limits=Limits(max_batch_size=cfg.max_batch_size, max_elements=cfg.max_elements),
        max_body_bytes=cfg.max_body_bytes,
        body_timeout=cfg.body_timeout,
        budget=BodyBudget(cfg.max_inflight_body_bytes),
        decode_pool=DecodePool(cfg.offload_json_bytes),
        access_log=None if cfg.no_access_log else AccessLog(sys.stderr),
        sweep=sweep,
    )
    limits = GenerateLimits(
        max_tokens=cfg.generate_max_tokens,
        timeout=cfg.generate_timeout,
        max_concurrency=cfg.generate_max_concurrency,
        queue_timeout=cfg.generate_queue_timeout,
    )
    plane.add_extension(Generate.name, Generate(limits))
    app = ServeApp(plane)
    openai_api.mount(app)
    front = Front(
        FrontLimits(
            header_timeout=cfg.header_timeout,
            keepalive_timeout=cfg.keepalive_timeout,
            max_request_line_bytes=cfg.max_request_line_bytes,
            max_header_bytes=cfg.max_header_bytes,
            max_connections=cfg.max_connections,
            max_connections_per_client=cfg.max_connections_per_client,
        ),
        on_reject=metrics.reject,
        sweep=sweep,
    )
    return app, front


async def _serve(cfg: ServeConfig, token: str, tls: TlsMaterial | None) -> None:
    import uvicorn

    from runtime.serve.drain import DrainingServer

    app, front = build_app(cfg, token)
    certificates = None if tls is None else Certificates(cfg.tls_source(), tls)
    grpc_server = None
    if cfg.grpc_port:
        from runtime.serve.grpc_service import start_grpc

        limits = {
            "max_body_bytes": cfg.max_body_bytes,
            "max_header_bytes": cfg.max_header_bytes,
            "header_timeout": cfg.header_timeout,
            "keepalive_timeout": cfg.keepalive_timeout,
            "max_concurrent_rpcs": cfg.grpc_max_concurrent_rpcs,
            "max_connections": cfg.max_connections,
        }
        credentials = None if certificates is None else certificates.grpc_credentials()
        grpc_server = await start_grpc(app.plane, cfg.host, cfg.grpc_port, limits=limits, credentials=credentials)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload(cfg, app, certificates)))
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        loop="none",
        http=front.protocol_class(),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # no proxy is trusted: X-Forwarded-For must not rewrite the client's address
        timeout_keep_alive=cfg.keepalive_timeout,
        limit_concurrency=None,  # the front's connection caps (runtime.serve.front) replace it
    )
    config.load()
    if certificates is not None:
        config.ssl = certificates.context  # ours, reloadable in place (uvicorn's own reads files once)
    server = DrainingServer(config, plane=app.plane, drain_timeout=cfg.drain_timeout, grpc_server=grpc_server)
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=None)  # already drained, unless startup failed


async def reload(cfg: ServeConfig, app, certificates: Certificates | None) -> None:
    """SIGHUP: read the token and the TLS certificate again; a refused one keeps the current one."""
    try:
        new_token, source = await asyncio.to_thread(load_token, cfg.token_file, cfg.token_ssm_parameter)
    except TokenError as e:  # its messages never quote the token (runtime.serve.auth)
        log.error("token reload failed, keeping the current token: %s", e)
    except Exception as e:  # anything else may carry the file's bytes: log its type only
        log.error("token reload failed (%s), keeping the current token", type(e).__name__)
    else:
        app.plane.auth.set_token(new_token)
        log.info("token reloaded from %s", source)
    if certificates is None:
        return
    try:
        material = await asyncio.to_thread(load_material, certificates.source)
        certificates.install(material)
    except (TlsError, OSError) as e:  # ssl.SSLError is an OSError; none quotes the key's bytes
        log.error("TLS reload failed, keeping the current certificate: %s", e)
    else:
        log.info("TLS %s reloaded from %s (new connections use it)", material.summary(), certificates.source.describe())


def raise_fd_limit(cfg: ServeConfig) -> str:
    """Raise the soft open-files limit to what the connection caps need; return a description.

    Every connection is a file descriptor; with the common soft limit of 1,024 the process would
    fail to accept (EMFILE) before `--max-connections` is reached. Raises ValueError when the hard
    limit is too low (raise it, e.g. systemd `LimitNOFILE=`, or lower --max-connections).
    """
    import resource

    needed = cfg.max_connections * (2 if cfg.grpc_port else 1) + 256  # model files, pipes, the loop
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ValueError(
                f"--max-connections {cfg.max_connections} needs {needed} open files but the hard limit is {hard}; "
                "raise it (ulimit -Hn, systemd LimitNOFILE=) or lower --max-connections"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return f"open-files limit {soft}"


def main(argv: list[str] | None = None) -> int:
    """Entry of `stratus serve`: 2 for bad options, no token or no usable TLS material; serves until
    SIGTERM/SIGINT, drains, then 0."""
    epilog = (
        f"Token: exactly one of --token-file, ${TOKEN_ENV}, --token-ssm-parameter (required). "
        "TLS: --tls-cert/--tls-key or --tls-cert-ssm-parameter/--tls-key-ssm-parameter (required unless "
        "--insecure-plain-http)."
    )
    try:
        cfg = parse_options(ServeConfig, argv, prog="stratus serve", description=__doc__, epilog=epilog)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    configure_logging(cfg.log_level)
    try:
        open_repo(cfg.repo)
        token, source = load_token(cfg.token_file, cfg.token_ssm_parameter)
        tls_source = cfg.tls_source()
        tls = None if tls_source is None else load_material(tls_source)
        files = raise_fd_limit(cfg)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if tls is None:
        log.warning(
            "--insecure-plain-http: serving plain HTTP%s without TLS; the token and every request cross the "
            "network in clear (local use only; give --tls-cert/--tls-key elsewhere)",
            " and plaintext gRPC" if cfg.grpc_port else "",
        )
    scheme = "http" if tls is None else "https"
    grpc = f" and gRPC{'' if tls is None else ' over TLS'} on {cfg.host}:{cfg.grpc_port}" if cfg.grpc_port else ""
    tls_line = "" if tls is None else f", TLS {tls.summary()} from {tls_source.describe()}"
    log.info(
        "serving %s from %s on %s://%s:%d%s (token from %s%s, %s)",
        cfg.model,
        cfg.repo,
        scheme,
        cfg.host,
        cfg.port,
        grpc,
        source,
        tls_line,
        files,
    )
    import uvloop

    # uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again for the previous
    # handler; with the default one the process would die by the signal (exit -15) instead of
    # returning ExitCode.OK after a clean shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    started = time.monotonic()
    uvloop.run(_serve(cfg, token, tls))
    log.info("stopped after %.0f s", time.monotonic() - started)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
