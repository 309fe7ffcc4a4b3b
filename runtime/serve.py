"""`python -m runtime serve`: authenticated Open Inference Protocol (KServe v2) server.

    # local repository, token from a file (chmod 600)
    python -m runtime serve --repo runs/model-repo --model mlp-binary --token-file ~/.stratus-token
    # the stack's serving host (systemd unit in infra/serving.py)
    python -m runtime serve --repo s3://<models_bucket>/models --model mlp-binary \\
        --host <private ip> --port 8000 --token-ssm-parameter <serving_token_parameter>

Routes: GET /v2/health/live (the only one without the token), /v2/health/ready, /v2,
/v2/models/{name}[/versions/{v}], .../ready, .../config, POST .../infer (JSON or the binary tensor
extension), GET /metrics (Prometheus). Every route but liveness needs `Authorization: Bearer`.

The token comes from exactly one of `--token-file PATH`, the environment variable
STRATUS_SERVE_TOKEN, or `--token-ssm-parameter NAME` (SSM SecureString, read with decryption);
never from a command-line value. Without one the server refuses to start. `kill -HUP <pid>`
re-reads it from the same source (token rotation without a restart).

The server is live at once and ready only after a verified version answered a warm-up; it polls
`<repo>/<model>/LATEST` every --poll-interval seconds and swaps in new versions atomically.
Logs are JSON lines on stderr; access-log lines have "logger": "stratus.access" and are written
in batches every 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path

import orjson

from runtime.publish import check_model_name
from runtime.repo import open_repo

log = logging.getLogger("stratus.serve")

TOKEN_ENV = "STRATUS_SERVE_TOKEN"  # noqa: S105 (a variable name, not a secret)
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The serving token is missing, ambiguous, unreadable or too weak."""


def load_token(token_file: str | None, ssm_parameter: str | None, environ=os.environ) -> tuple[str, str]:
    """Return (token, description of its source) from exactly one configured source.

    Raises:
        TokenError: no source, more than one, unreadable/world-readable file, SSM failure, or a
            token shorter than MIN_TOKEN_CHARS.
    """
    sources = [
        name
        for name, given in (
            ("--token-file", token_file),
            (TOKEN_ENV, environ.get(TOKEN_ENV)),
            ("--token-ssm-parameter", ssm_parameter),
        )
        if given
    ]
    if not sources:
        raise TokenError(
            f"no serving token: pass --token-file PATH, set {TOKEN_ENV}, or pass --token-ssm-parameter NAME; "
            "the server does not start without one"
        )
    if len(sources) > 1:
        raise TokenError(f"token given by {' and '.join(sources)}: configure exactly one source")
    if token_file:
        path = Path(token_file)
        try:
            mode = path.stat().st_mode
            token = path.read_text().strip()
        except OSError as e:
            raise TokenError(f"--token-file {path}: cannot read it ({e.strerror})") from None
        if mode & stat.S_IROTH:
            raise TokenError(f"--token-file {path} is world-readable: run `chmod 600 {path}`")
        source = f"file {path}"
    elif ssm_parameter:
        token, source = _ssm_token(ssm_parameter), f"SSM parameter {ssm_parameter}"
    else:
        token, source = environ[TOKEN_ENV].strip(), f"environment variable {TOKEN_ENV}"
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(
            f"token from {source} has {len(token)} characters or contains whitespace; use at least "
            f"{MIN_TOKEN_CHARS} non-space characters, e.g. `openssl rand -hex 32`"
        )
    return token, source


def _ssm_token(name: str) -> str:
    import boto3

    try:
        return boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except Exception as e:  # botocore ClientError, NoCredentialsError, EndpointConnectionError
        raise TokenError(f"--token-ssm-parameter {name}: GetParameter failed: {e}") from None


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Token: exactly one of --token-file, ${TOKEN_ENV}, --token-ssm-parameter (required).",
    )
    p.add_argument("--repo", required=True, help="model repository: local directory or s3://bucket/prefix")
    p.add_argument("--model", required=True, help="model name in the repository (also the served name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; the stack: private IP)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token-file", help="file holding the bearer token (must not be world-readable)")
    p.add_argument("--token-ssm-parameter", help="SSM SecureString parameter holding the bearer token")
    p.add_argument("--poll-interval", type=float, default=10.0, help="seconds between LATEST checks (default 10)")
    p.add_argument("--max-body-bytes", type=int, default=16 << 20, help="request body cap after decompression")
    p.add_argument("--max-batch-size", type=int, default=64, help="largest batch dimension accepted (default 64)")
    p.add_argument("--max-elements", type=int, default=1 << 22, help="largest element count of one input tensor")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds allowed to receive a request body")
    p.add_argument(
        "--max-connections", type=int, default=1024, help="concurrent connections before answering 503 (default 1024)"
    )
    p.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one JSON line per request")
    return p


def _check_args(args: argparse.Namespace) -> None:
    check_model_name(args.model)
    for name in ("max_body_bytes", "max_batch_size", "max_elements", "intra_op_threads", "max_connections"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.poll_interval <= 0 or args.body_timeout <= 0:
        raise ValueError("--poll-interval and --body-timeout must be positive")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: use 1-65535")


async def _serve(args: argparse.Namespace, token: str) -> None:
    import uvicorn

    from runtime.serve_app import ServeApp
    from runtime.serve_metrics import AccessLog, Metrics
    from runtime.serve_model import ModelManager
    from runtime.serve_protocol import Limits

    metrics = Metrics()
    manager = ModelManager(
        open_repo(args.repo),
        args.model,
        poll_interval=args.poll_interval,
        max_batch_size=args.max_batch_size,
        intra_op_threads=args.intra_op_threads,
        on_event=metrics.on_model_event,
    )
    app = ServeApp(
        manager,
        token,
        metrics,
        limits=Limits(max_batch_size=args.max_batch_size, max_elements=args.max_elements),
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        access_log=None if args.no_access_log else AccessLog(sys.stderr),
    )

    async def rotate() -> None:
        try:
            new_token, source = await asyncio.to_thread(load_token, args.token_file, args.token_ssm_parameter)
        except TokenError as e:
            log.error("token reload failed, keeping the current token: %s", e)
            return
        app.set_token(new_token)
        log.info("token reloaded from %s", source)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(rotate()))
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        loop="none",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=15,
        limit_concurrency=args.max_connections,
    )
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    """CLI entry. Returns 2 for configuration errors (incl. no token); serves until SIGTERM/SIGINT."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        _check_args(args)
        open_repo(args.repo)
        token, source = load_token(args.token_file, args.token_ssm_parameter)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    log.info("serving %s from %s on http://%s:%d (token from %s)", args.model, args.repo, args.host, args.port, source)
    import uvloop

    started = time.monotonic()
    uvloop.run(_serve(args, token))
    log.info("stopped after %.0f s", time.monotonic() - started)
    return 0
