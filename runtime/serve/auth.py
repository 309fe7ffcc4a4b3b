"""The serving token: read from exactly one source, checked, never logged.

Sources: `--token-file PATH` (not world-readable), the environment variable STRATUS_SERVE_TOKEN,
or `--token-ssm-parameter NAME` (SSM SecureString, read with decryption). Never a command-line
value. `kill -HUP <pid>` makes the server call `load_token` again (rotation without a restart).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
