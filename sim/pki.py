"""A local certificate authority and server certificates, made on the spot with `cryptography`.

    ca = LocalCA.create(tmp_path / "ca")
    pair = ca.issue(tmp_path / "server")   # pair.cert, pair.key (PEM files, the key mode 600)
    httpx.get("https://127.0.0.1:PORT/...", verify=str(ca.cert_path))

The simulated stack makes its serving CA with it (what the stack's pulumi-tls resources make on
AWS, `infra/components/tls.py`), and the tests and benchmarks make theirs. EC P-256 keys, as the
stack's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class CertPair:
    """A server certificate file and its key file."""

    cert: Path
    key: Path


@dataclass
class LocalCA:
    """A self-signed CA (EC P-256) that issues server certificates (for 127.0.0.1 and localhost
    unless told other names)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "stratus local CA") -> LocalCA:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(
        self,
        directory: Path,
        *,
        common_name: str = "stratus server",
        ips: tuple[str, ...] = (HOST,),
        dns_names: tuple[str, ...] = ("localhost",),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> CertPair:
        """A server certificate for `ips` and `dns_names` (valid yesterday to +30 days unless told)."""
        directory.mkdir(parents=True, exist_ok=True)
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [*(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips), *map(x509.DNSName, dns_names)]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pair = CertPair(directory / "server.pem", directory / "server.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(_pem_key(key))
        pair.key.chmod(0o600)
        return pair
