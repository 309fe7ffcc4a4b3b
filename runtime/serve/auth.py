"""The serving token: read from exactly one source, checked, never logged.

Sources: `--token-file PATH` (mode 600 or 400: no group or other access), the environment variable
STRATUS_SERVE_TOKEN, or `--token-ssm-parameter NAME` (SSM SecureString, read with decryption).
Never a command-line value. `kill -HUP <pid>` makes the server call `load_token` again (rotation
without a restart; a token that is refused keeps the current one).

A token is 16 to 4,096 characters of the bearer-token alphabet of RFC 6750 (letters, digits,
`-._~+/`, trailing `=`), so it travels unchanged in an HTTP header and in gRPC metadata; a file
may end in one newline. A file that is not UTF-8, starts with a byte-order mark (an editor's
"UTF-8 with BOM" or UTF-16) or holds anything else is refused. No message here ever quotes the
token's bytes, not even one of them: they say where the problem is and how to fix it.

`Authenticator` is the check every protocol adapter uses (`runtime.serve.dataplane`): the bearer
token compared as sha256 digests with `hmac.compare_digest` (constant time, no length leak), and
exactly one Authorization per request (two are refused with 400, never "the last wins").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from pathlib import Path

from runtime.serve.body import Refused

TOKEN_ENV = "STRATUS_SERVE_TOKEN"  # noqa: S105 (a variable name, not a secret)
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 4096
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class TokenError(ValueError):
    """The serving token is missing, ambiguous, unreadable or too weak."""


class Authenticator:
    """Who may call: one `Authorization: Bearer <token>` (HTTP header or gRPC metadata entry).

    `set_token` swaps the token (SIGHUP rotation); requests already checked keep their answer."""

    def __init__(self, token: str):
        self.set_token(token)

    def set_token(self, token: str) -> None:
        if not token:
            raise ValueError("the serving token is empty")
        self._digest = hashlib.sha256(token.encode()).digest()

    def valid(self, credentials: bytes | None) -> bool:
        """Whether `credentials` (the Authorization value) is `Bearer <the token>`."""
        if not credentials or credentials[:7].lower() != b"bearer ":
            return False
        return hmac.compare_digest(hashlib.sha256(credentials[7:].strip()).digest(), self._digest)

    def http(self, headers: dict[bytes, bytes], raw_headers: list, public: bool) -> bool:
        """Whether an HTTP request may pass: `public`, or its one Authorization header is valid.

        `headers` is `dict(raw_headers)`; a repeated header of any name makes it shorter, and only
        then are the raw headers scanned for a second Authorization (Refused 400)."""
        if len(headers) != len(raw_headers) and sum(1 for name, _ in raw_headers if name == b"authorization") > 1:
            raise Refused(400, "more than one Authorization header; send exactly one", "duplicate_authorization")
        return public or self.valid(headers.get(b"authorization"))

    def grpc(self, metadata, public: bool) -> bool:
        """Whether a gRPC call may pass: `public`, or its one `authorization` entry is valid."""
        given = [value for key, value in metadata or () if key == "authorization"]
        if len(given) > 1:
            raise Refused(400, "more than one authorization entry; send exactly one", "duplicate_authorization")
        return public or self.valid(given[0].encode() if given else None)


def load_token(token_file: str | None, ssm_parameter: str | None, environ=os.environ) -> tuple[str, str]:
    """Return (token, description of its source) from exactly one configured source.

    Raises:
        TokenError: no source, more than one, an unreadable file or one with group/other access,
            not UTF-8 or with a byte-order mark, an SSM failure, or a token that is too short or
            holds characters outside the bearer-token alphabet.
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
        token, source = _file_token(Path(token_file)), f"file {token_file}"
    elif ssm_parameter:
        token, source = _ssm_token(ssm_parameter).strip(), f"SSM parameter {ssm_parameter}"
    else:
        token, source = environ[TOKEN_ENV].strip(), f"environment variable {TOKEN_ENV}"
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_FILE_BYTES or not _TOKEN_RE.fullmatch(token):
        raise TokenError(
            f"token from {source} has {len(token)} characters or characters other than letters, digits and "
            f"-._~+/ (trailing =); use at least {MIN_TOKEN_CHARS} (at most {MAX_TOKEN_FILE_BYTES}) of those, "
            "e.g. `openssl rand -hex 32`"
        )
    return token, source


def read_parameter(name: str, flag: str, error: type[Exception]) -> str:
    """The value of SSM parameter `name`, read with decryption (the token, the TLS key and
    certificate). Raises `error` naming `flag` and the parameter when the read fails."""
    import boto3

    try:
        return boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except Exception as e:  # botocore ClientError, NoCredentialsError, EndpointConnectionError
        raise error(f"{flag} {name}: GetParameter failed: {e}") from None


def _ssm_token(name: str) -> str:
    return read_parameter(name, "--token-ssm-parameter", TokenError)


def _file_token(path: Path) -> str:
    """The token in `path`, checked for access bits and encoding before anything is decoded."""
    try:
        info = path.stat()
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as e:
        raise TokenError(f"--token-file {path}: cannot read it ({e.strerror})") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        what = "world-readable" if info.st_mode & stat.S_IROTH else "accessible to its group or others"
        raise TokenError(f"--token-file {path} is {what} (mode {stat.S_IMODE(info.st_mode):o}): run `chmod 600 {path}`")
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise TokenError(f"--token-file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes; it should hold one token")
    if raw.startswith(_BOMS):
        raise TokenError(
            f"--token-file {path} starts with a byte-order mark (saved as 'UTF-8 with BOM' or UTF-16); "
            "save it as plain ASCII, e.g. `openssl rand -hex 32 > FILE`"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # its message quotes a byte of the file: not used
        raise TokenError(f"--token-file {path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    return text.strip()
