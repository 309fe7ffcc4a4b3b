"""The options of `stratus serve`: where the model comes from, where to listen, request limits.

Each field is one flag (`runtime.common.options`); validation names the flag and the fix.
The token's source is configured here too, but the token itself never is (runtime.serve.auth).
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.common.options import option
from runtime.contract import model_name_problem

LOG_LEVELS = ("debug", "info", "warning", "error")


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
    """File holding the bearer token (must not be world-readable)."""

    token_ssm_parameter: str | None = option(None, metavar="NAME")
    """SSM SecureString parameter holding the bearer token."""

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
    """Concurrent connections before answering 503."""

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
        for name in ("max_body_bytes", "max_batch_size", "max_elements", "intra_op_threads", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.poll_interval <= 0 or self.body_timeout <= 0:
            raise ValueError("--poll-interval and --body-timeout must be positive")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {self.port}: use 1-65535")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
