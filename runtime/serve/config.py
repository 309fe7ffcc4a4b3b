"""The options of `stratus serve`: where the model comes from, where to listen, request limits.

Each field is one flag (`runtime.common.options`); validation names the flag and the fix.
The token's source is configured here too, but the token itself never is (runtime.serve.auth).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.common.options import option
from runtime.contract import model_name_problem
from runtime.serve.tls import TlsSource

LOG_LEVELS = ("debug", "info", "warning", "error")


_POSITIVE = (
    "max_body_bytes",
    "max_batch_size",
    "max_elements",
    "intra_op_threads",
    "generate_max_tokens",
    "generate_timeout",
    "generate_max_concurrency",
    "generate_queue_timeout",
    "max_connections",
    "max_connections_per_client",
    "max_request_line_bytes",
    "max_header_bytes",
    "max_inflight_body_bytes",
    "offload_json_bytes",
    "poll_interval",
    "body_timeout",
    "header_timeout",
    "keepalive_timeout",
    "grpc_max_concurrent_rpcs",
    "drain_timeout",
)
_NOT_ABOVE = (
    ("max_connections_per_client", "max_connections"),
    ("max_request_line_bytes", "max_header_bytes"),
    ("max_body_bytes", "max_inflight_body_bytes"),
)


@dataclass(kw_only=True)
class ServeConfig:
    repo: str = option(metavar="REPO")
    """Model repository: local directory or s3://bucket/prefix."""

    model: str = option(metavar="NAME")
    """Model name in the repository (also the served name)."""

    host: str = "127.0.0.1"
    """Address to bind (default 127.0.0.1; the stack: the host's private IP)."""

    port: int = 8000
    """TCP port."""

    token_file: str | None = option(None, metavar="PATH")
    """File holding the bearer token (mode 600 or 400: no group or other access)."""

    token_ssm_parameter: str | None = option(None, metavar="NAME")
    """SSM SecureString parameter holding the bearer token."""

    tls_cert: str | None = option(None, metavar="PATH")
    """PEM certificate of the server (its chain may follow), for HTTPS and gRPC over TLS; with --tls-key."""

    tls_key: str | None = option(None, metavar="PATH")
    """PEM private key of --tls-cert, unencrypted, not readable by other users (mode 600 or 640)."""

    tls_cert_ssm_parameter: str | None = option(None, metavar="NAME")
    """SSM parameter holding the PEM certificate (the stack's way); with --tls-key-ssm-parameter."""

    tls_key_ssm_parameter: str | None = option(None, metavar="NAME")
    """SSM SecureString parameter holding the PEM private key, read with decryption."""

    insecure_plain_http: bool = False
    """Serve plain HTTP and plaintext gRPC, without TLS: for local use only (the token and every
    request cross the network in clear). Without it, TLS material is required."""

    drain_timeout: float = option(30.0, metavar="SECONDS")
    """On SIGTERM: seconds in-flight requests (streams included) may take to finish; the rest are
    then cancelled and the server exits."""

    poll_interval: float = option(10.0, metavar="SECONDS")
    """Seconds between checks of <repo>/<model>/LATEST."""

    max_body_bytes: int = option(16 << 20, metavar="BYTES")
    """Request body cap after decompression."""

    max_batch_size: int = option(64, metavar="N")
    """Largest batch dimension accepted."""

    max_elements: int = option(1 << 22, metavar="N")
    """Largest element count of one input tensor."""

    body_timeout: float = option(30.0, metavar="SECONDS")
    """Seconds allowed to receive a request body."""

    max_connections: int = option(1024, metavar="N")
    """Open connections in all; at the cap the longest-idle one is closed for a new one (503 if none is idle).
    The gRPC port has the same cap of its own; there a connection beyond it is closed at accept."""

    max_connections_per_client: int = option(256, metavar="N")
    """Open connections from one client address before answering 503."""

    header_timeout: float = option(10.0, metavar="SECONDS")
    """Seconds for a request's line and headers to arrive, from accept (408 or close after)."""

    keepalive_timeout: float = option(15.0, metavar="SECONDS")
    """Seconds an idle keep-alive connection stays open between requests."""

    max_request_line_bytes: int = option(8 << 10, metavar="BYTES")
    """Longest request line (method + URL); longer answers 414."""

    max_header_bytes: int = option(32 << 10, metavar="BYTES")
    """Largest request head (request line + headers); larger answers 431."""

    max_inflight_body_bytes: int = option(256 << 20, metavar="BYTES")
    """Request body bytes all requests together may hold; beyond it 503 with Retry-After."""

    offload_json_bytes: int = option(1 << 20, metavar="BYTES")
    """JSON bodies larger than this are decoded in a worker process, off the event loop (~30 ms of loop per MiB)."""

    grpc_port: int = option(0, metavar="PORT")
    """Also serve the protocol over gRPC on this port (0: off)."""

    grpc_max_concurrent_rpcs: int = option(64, metavar="N")
    """Authenticated gRPC calls whose message arrived that may run at once; beyond it
    RESOURCE_EXHAUSTED (anonymous calls and calls still waiting for their message hold no slot)."""

    generate_max_tokens: int = option(256, metavar="N")
    """Language models: most new tokens one request may ask for (more is refused: 422 on /generate,
    400 on /v1)."""

    generate_timeout: float = option(30.0, metavar="SECONDS")
    """Language models: seconds one request may generate for; it then ends with what it generated so
    far and finish_reason `time_limit` (/generate) or `length` (/v1)."""

    generate_max_concurrency: int = option(4, metavar="N")
    """Language models: generations in flight at once, for /generate and the OpenAI routes
    together, each with its own key/value cache; an onnxruntime-genai model decodes them together
    in one batched step."""

    generate_queue_timeout: float = option(10.0, metavar="SECONDS")
    """Language models: seconds a request waits for one of the --generate-max-concurrency slots;
    then 503 with Retry-After."""

    intra_op_threads: int = option(1, metavar="N")
    """ONNX Runtime intra-op threads."""

    log_level: str = option("info", choices=LOG_LEVELS)
    """Log level of the JSON log on stderr."""

    no_access_log: bool = False
    """Do not log one JSON line per request."""

    def __post_init__(self) -> None:
        problem = model_name_problem(self.model)
        if problem:
            raise ValueError(f"--model: {problem}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for small, large in _NOT_ABOVE:
            if getattr(self, small) > getattr(self, large):
                raise ValueError(
                    f"--{small.replace('_', '-')} {getattr(self, small)} exceeds --{large.replace('_', '-')} "
                    f"{getattr(self, large)}; lower the first or raise the second"
                )
        if not 0 < self.port < 65536 or not 0 <= self.grpc_port < 65536 or self.grpc_port == self.port:
            raise ValueError(f"--port {self.port} / --grpc-port {self.grpc_port}: use 1-65535, two different ports")
        _check_tls_flags(self)
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")

    def tls_source(self) -> TlsSource | None:
        """Where the certificate and key come from; None with --insecure-plain-http."""
        if self.insecure_plain_http:
            return None
        return TlsSource(
            cert_file=self.tls_cert,
            key_file=self.tls_key,
            cert_parameter=self.tls_cert_ssm_parameter,
            key_parameter=self.tls_key_ssm_parameter,
        )


_NO_TLS = (
    "no TLS certificate: pass --tls-cert PATH --tls-key PATH (or, on the stack, --tls-cert-ssm-parameter NAME "
    "--tls-key-ssm-parameter NAME); for local use only, --insecure-plain-http serves plain HTTP and gRPC"
)


def _check_tls_flags(cfg: ServeConfig) -> None:
    """Exactly one of: the two files, the two parameters, --insecure-plain-http."""
    files, parameters = (cfg.tls_cert, cfg.tls_key), (cfg.tls_cert_ssm_parameter, cfg.tls_key_ssm_parameter)
    for (a, b), (name_a, name_b) in (
        (files, ("--tls-cert", "--tls-key")),
        (parameters, ("--tls-cert-ssm-parameter", "--tls-key-ssm-parameter")),
    ):
        if bool(a) != bool(b):
            given, missing = (name_a, name_b) if a else (name_b, name_a)
            raise ValueError(f"{given} needs {missing}: give the certificate and its key together")
    chosen = [
        name
        for name, given in (
            ("--tls-cert/--tls-key", all(files)),
            ("--tls-cert-ssm-parameter/--tls-key-ssm-parameter", all(parameters)),
            ("--insecure-plain-http", cfg.insecure_plain_http),
        )
        if given
    ]
    if not chosen:
        raise ValueError(_NO_TLS)
    if len(chosen) > 1:
        raise ValueError(f"{' and '.join(chosen)} given together: choose one")
