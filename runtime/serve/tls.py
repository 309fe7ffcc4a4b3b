"""TLS for `stratus serve`: the certificate and key, checked at start, and both ports' settings.

Sources: `--tls-cert PATH --tls-key PATH` (PEM files), or `--tls-cert-ssm-parameter NAME
--tls-key-ssm-parameter NAME` (SSM parameters holding the PEM text, read with decryption, the
stack's way); `ServeConfig` makes sure exactly one pair, or `--insecure-plain-http`, is given.
The material is read once into memory and checked before anything listens (`load_material`):
the certificate parses as PEM (the first certificate is the server's, any after it its chain),
the key parses and is not encrypted, the key belongs to the certificate, and the certificate is
valid now. Every refusal is a `TlsError` naming the flag, the file or parameter and the fix; the
key's bytes are never quoted.

Protocol settings (`server_context`; the gRPC port through grpc-core, `grpc_credentials`):
TLS 1.2 and 1.3 only; on TLS 1.2 only ECDHE key exchange with an AEAD cipher (AES-GCM,
ChaCha20-Poly1305), TLS 1.3's suites being all of that kind; no compression, no renegotiation.
grpc-core's own defaults for a server are the same (TLS 1.2 minimum, ECDHE + AEAD suites), which
tests/runtime/serve/test_tls.py checks against the running port.

Reload (`kill -HUP`: `load_material`, then `Certificates.install`): the new material is read and checked first; only
then is it loaded into the live `ssl.SSLContext` of the HTTP port (connections accepted after
that handshake with it, open ones keep theirs) and handed to grpc-core, which asks for it before
each new connection's handshake (`grpc.dynamic_ssl_server_credentials`). A refused reload keeps
the current certificate.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from runtime.serve.auth import read_parameter

MAX_PEM_BYTES = 1 << 20
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!PSK"
"""OpenSSL cipher list for TLS 1.2: forward secrecy (ECDHE) and AEAD only."""


class TlsError(ValueError):
    """The TLS certificate or key is missing, unreadable, malformed, mismatched or expired."""


@dataclass(frozen=True, kw_only=True)
class TlsSource:
    """Where the certificate and key come from: two files, or two SSM parameters."""

    cert_file: str | None = None
    key_file: str | None = None
    cert_parameter: str | None = None
    key_parameter: str | None = None

    def describe(self) -> str:
        if self.cert_file:
            return f"files {self.cert_file} and {self.key_file}"
        return f"SSM parameters {self.cert_parameter} and {self.key_parameter}"


@dataclass(frozen=True)
class TlsMaterial:
    """A checked certificate chain and its key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes
    subject: str
    not_after: datetime

    def summary(self) -> str:
        return f"certificate {self.subject}, valid until {self.not_after:%Y-%m-%d %H:%M} UTC"


def load_material(source: TlsSource, now: datetime | None = None) -> TlsMaterial:
    """Read the certificate and key from `source` and check them (module docstring).

    Raises:
        TlsError: naming the flag and file (or parameter), what is wrong and what to do.
    """
    if source.cert_file:
        cert_where, key_where = f"--tls-cert {source.cert_file}", f"--tls-key {source.key_file}"
        cert_pem, _ = _read_file(Path(source.cert_file), "--tls-cert", key=False)
        key_pem, key_mode = _read_file(Path(source.key_file), "--tls-key", key=True)
        material = check_material(cert_pem, key_pem, cert_where, key_where, now=now)
        if key_mode & 0o007:  # after the content checks, so that swapped files are named as such
            raise TlsError(
                f"{key_where} is readable by any user (mode {key_mode:o}): run `chmod 600 {source.key_file}`"
            )
        return material
    cert_where = f"--tls-cert-ssm-parameter {source.cert_parameter}"
    key_where = f"--tls-key-ssm-parameter {source.key_parameter}"
    cert_pem = _read_parameter(source.cert_parameter, "--tls-cert-ssm-parameter")
    key_pem = _read_parameter(source.key_parameter, "--tls-key-ssm-parameter")
    return check_material(cert_pem, key_pem, cert_where, key_where, now=now)


def check_material(
    cert_pem: bytes, key_pem: bytes, cert_where: str, key_where: str, *, now: datetime | None = None
) -> TlsMaterial:
    """Check a PEM certificate chain and key; `cert_where`/`key_where` name them in messages.

    Raises:
        TlsError: not PEM, an encrypted key, a key of another certificate, not valid at `now`.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if b"PRIVATE KEY-----" in cert_pem and b"CERTIFICATE-----" not in cert_pem:
        raise TlsError(f"{cert_where} holds a private key, not a certificate: are the cert and key swapped?")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError(
            f"{cert_where} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----', the server's "
            "certificate first, then its chain); convert a DER file with `openssl x509 -inform der -in F -out F.pem`"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # cryptography's way of saying the key is encrypted
        raise TlsError(
            f"{key_where} is an encrypted private key; the server reads no passphrase: store it decrypted "
            "(`openssl pkey -in KEY -out KEY.plain`) with mode 600"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        swapped = b"CERTIFICATE-----" in key_pem and b"PRIVATE KEY-----" not in key_pem
        hint = "it holds a certificate: are the cert and key swapped?" if swapped else type(e).__name__
        raise TlsError(f"{key_where} is not a PEM private key ({hint}); give the certificate's key") from None
    leaf = chain[0]
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*der) != leaf.public_key().public_bytes(*der):
        raise TlsError(
            f"{key_where} does not belong to the certificate in {cert_where} (their public keys differ); "
            "give the key the certificate was issued for, or re-issue the certificate"
        )
    now = now or datetime.now(UTC)
    subject = leaf.subject.rfc4514_string() or "(empty subject)"
    if leaf.not_valid_after_utc <= now:
        raise TlsError(
            f"{cert_where} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC ({subject}); "
            "renew it (on the stack: `pulumi up` re-issues it), then start or `kill -HUP` the server"
        )
    if leaf.not_valid_before_utc > now:
        raise TlsError(
            f"{cert_where} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC ({subject}); "
            "check this host's clock or re-issue the certificate"
        )
    return TlsMaterial(cert_pem, key_pem, subject, leaf.not_valid_after_utc)


def _read_file(path: Path, flag: str, *, key: bool) -> tuple[bytes, int]:
    """The file's bytes and its permission bits."""
    try:
        info = path.stat()
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        what = "the server's private key (PEM)" if key else "the server's certificate chain (PEM)"
        raise TlsError(f"{flag} {path}: cannot read it ({e.strerror}); point {flag} at {what}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsError(f"{flag} {path} is larger than {MAX_PEM_BYTES} bytes; it should hold PEM text")
    return data, info.st_mode & 0o777


def _read_parameter(name: str | None, flag: str) -> bytes:
    return read_parameter(name, flag, TlsError).encode()


def server_context(material: TlsMaterial) -> ssl.SSLContext:
    """The HTTP port's context: TLS 1.2+, ECDHE + AEAD, no compression or renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    load_into(context, material)
    return context


def load_into(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """Load `material` into `context` (OpenSSL reads only files: a private directory, removed at once)."""
    with tempfile.TemporaryDirectory(prefix="stratus-tls-") as tmp:  # mode 700
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, data in ((cert, material.cert_pem), (key, material.key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)


class Certificates:
    """The serving certificate of both ports, swapped in place by `install`.

    Args:
        source: where the material comes from (read again on every reload).
        material: the material checked at start.
    """

    def __init__(self, source: TlsSource, material: TlsMaterial):
        self.source = source
        self.material = material
        self.context = server_context(material)
        self._lock = threading.Lock()  # grpc-core calls the fetcher from its own threads
        self._grpc_pending = None

    def install(self, material: TlsMaterial) -> None:
        """Use checked `material` (`load_material(self.source)`) for new connections on both ports."""
        load_into(self.context, material)  # checked, so the live context cannot be left half-loaded
        with self._lock:
            self._grpc_pending = _grpc_configuration(material)
        self.material = material

    def grpc_credentials(self):
        """grpc-core server credentials that pick up `install`ed material at the next handshake."""
        import grpc

        return grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(self.material), self._grpc_fetch, require_client_authentication=False
        )

    def _grpc_fetch(self):
        with self._lock:
            pending, self._grpc_pending = self._grpc_pending, None
        return pending


def _grpc_configuration(material: TlsMaterial):
    import grpc

    return grpc.ssl_server_certificate_configuration([(material.key_pem, material.cert_pem)])
