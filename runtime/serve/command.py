"""`stratus serve`: authenticated Open Inference Protocol (KServe v2) server.

    # local repository, token from a file (chmod 600)
    stratus serve --repo runs/model-repo --model mlp-binary --token-file ~/.stratus-token
    # the stack's serving host (the systemd unit written by the stack's user data)
    stratus serve --repo s3://<models_bucket>/models --model mlp-binary \\
        --host <private ip> --port 8000 --token-ssm-parameter <serving_token_parameter>

    # also the protocol over gRPC (inference.GRPCInferenceService, the token in metadata)
    stratus serve --repo runs/model-repo --model mlp-binary --token-file ~/.stratus-token --grpc-port 8001

Routes: GET /v2/health/live (the only one without the token), /v2/health/ready, /v2,
/v2/models/{name}[/versions/{v}], .../ready, .../config, POST .../infer (JSON or the binary tensor
extension), GET /metrics (Prometheus); HEAD wherever GET. Language models add POST
/v2/models/{name}/generate and .../generate_stream (server-sent events) and the OpenAI API
(runtime.serve.openai_api: GET /v1/models, POST /v1/completions, POST /v1/chat/completions; point
an OpenAI client at base_url http://HOST:PORT/v1 with the token as its API key), capped by
--generate-max-tokens, --generate-timeout and --generate-max-concurrency (a request waits up to
--generate-queue-timeout for a slot, then 503). Every route but liveness needs exactly one
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
re-reads it from the same source (token rotation without a restart).

The server is live at once and ready only after a verified version answered a warm-up; it polls
`<repo>/<model>/LATEST` every --poll-interval seconds and swaps in new versions atomically.
Logs are JSON lines on stderr; access-log lines have "logger": "stratus.access" and are written
in batches every 0.2 s.
Exit codes (docs/architecture.md): 0 stopped by SIGTERM/SIGINT (after logging "stopped after N s");
2 bad options, no usable token or too low an open-files hard limit.
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


async def _serve(cfg: ServeConfig, token: str) -> None:
    import uvicorn

    app, front = build_app(cfg, token)
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
        grpc_server = await start_grpc(app.plane, cfg.host, cfg.grpc_port, limits=limits)

    async def rotate() -> None:
        try:
            new_token, source = await asyncio.to_thread(load_token, cfg.token_file, cfg.token_ssm_parameter)
        except TokenError as e:  # its messages never quote the token (runtime.serve.auth)
            log.error("token reload failed, keeping the current token: %s", e)
            return
        except Exception as e:  # anything else may carry the file's bytes: log its type only
            log.error("token reload failed (%s), keeping the current token", type(e).__name__)
            return
        app.plane.auth.set_token(new_token)
        log.info("token reloaded from %s", source)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(rotate()))
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
    try:
        await uvicorn.Server(config).serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=2)


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
    """Entry of `stratus serve`: 2 for bad options or no token; serves until SIGTERM/SIGINT, then 0."""
    epilog = f"Token: exactly one of --token-file, ${TOKEN_ENV}, --token-ssm-parameter (required)."
    try:
        cfg = parse_options(ServeConfig, argv, prog="stratus serve", description=__doc__, epilog=epilog)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    configure_logging(cfg.log_level)
    try:
        open_repo(cfg.repo)
        token, source = load_token(cfg.token_file, cfg.token_ssm_parameter)
        files = raise_fd_limit(cfg)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    grpc = f" and grpc://{cfg.host}:{cfg.grpc_port}" if cfg.grpc_port else ""
    log.info(
        "serving %s from %s on http://%s:%d%s (token from %s, %s)",
        cfg.model,
        cfg.repo,
        cfg.host,
        cfg.port,
        grpc,
        source,
        files,
    )
    import uvloop

    # uvicorn stops gracefully on SIGTERM/SIGINT and then raises the signal again for the previous
    # handler; with the default one the process would die by the signal (exit -15) instead of
    # returning ExitCode.OK after a clean shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    started = time.monotonic()
    uvloop.run(_serve(cfg, token))
    log.info("stopped after %.0f s", time.monotonic() - started)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
