"""`runtime.serve.tls.load_material`: each bad certificate or key is refused with a message that
names the flag, the file and the fix, and never quotes the key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from runtime.serve.config import ServeConfig
from runtime.serve.tls import TlsError, TlsSource, load_material
from sim.pki import CertPair, LocalCA


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("ca"))


def _files(pair: CertPair) -> TlsSource:
    return TlsSource(cert_file=str(pair.cert), key_file=str(pair.key))


def test_a_good_pair_loads(ca, tmp_path):
    material = load_material(_files(ca.issue(tmp_path)))
    assert material.subject == "CN=stratus server" and material.not_after > datetime.now(UTC)


def _missing_cert(pair):
    pair.cert.unlink()
    return pair.cert, "cannot read it"


def _encrypted(pair):
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    pair.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return pair.key, "encrypted private key"


def _world_readable(pair):
    pair.key.chmod(0o644)
    return pair.key, "chmod 600"


def _key_not_pem(pair):
    pair.key.write_bytes(b"\x00\x01 binary")
    return pair.key, "is not a PEM private key"


def _other_key(pair):
    other = ec.generate_private_key(ec.SECP256R1())
    pair.key.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pair.key, "does not belong to the certificate"


CASES = {
    "missing-cert": _missing_cert,
    "encrypted-key": _encrypted,
    "world-readable-key": _world_readable,
    "key-not-pem": _key_not_pem,
    "key-of-another-certificate": _other_key,
}


@pytest.mark.parametrize("case", CASES)
def test_bad_files_are_refused_naming_the_file(ca, tmp_path, case):
    pair = ca.issue(tmp_path)
    key_text = pair.key.read_text()
    named, message = CASES[case](pair)
    with pytest.raises(TlsError) as refused:
        load_material(_files(pair))
    assert str(named) in str(refused.value) and message in str(refused.value), refused.value
    assert key_text.splitlines()[1] not in str(refused.value)


def test_swapped_files_are_named_as_swapped(ca, tmp_path):
    pair = ca.issue(tmp_path)
    with pytest.raises(TlsError, match="swapped") as refused:
        load_material(TlsSource(cert_file=str(pair.key), key_file=str(pair.cert)))
    assert f"--tls-cert {pair.key}" in str(refused.value)


@pytest.mark.parametrize("when", ["expired", "not-yet-valid"])
def test_a_certificate_outside_its_validity_is_refused(ca, tmp_path, when):
    now = datetime.now(UTC)
    if when == "expired":
        pair = ca.issue(tmp_path, not_before=now - timedelta(days=10), not_after=now - timedelta(minutes=1))
        message = "expired on"
    else:
        pair = ca.issue(tmp_path, not_before=now + timedelta(days=1), not_after=now + timedelta(days=10))
        message = "not valid before"
    with pytest.raises(TlsError, match=message) as refused:
        load_material(_files(pair))
    assert f"--tls-cert {pair.cert}" in str(refused.value)


BASE = {"repo": "r", "model": "tiny"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, "no TLS certificate"),
        ({"tls_cert": "c.pem"}, "--tls-cert needs --tls-key"),
        ({"tls_key_ssm_parameter": "/k"}, "--tls-key-ssm-parameter needs --tls-cert-ssm-parameter"),
        ({"tls_cert": "c", "tls_key": "k", "insecure_plain_http": True}, "given together: choose one"),
        (
            {"tls_cert": "c", "tls_key": "k", "tls_cert_ssm_parameter": "/c", "tls_key_ssm_parameter": "/k"},
            "given together",
        ),
    ],
    ids=["none", "cert-without-key", "key-parameter-alone", "tls-and-plain", "files-and-parameters"],
)
def test_tls_flags_take_exactly_one_source(flags, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**BASE, **flags)


def test_each_source_alone_is_accepted():
    assert ServeConfig(**BASE, insecure_plain_http=True).tls_source() is None
    files = ServeConfig(**BASE, tls_cert="c", tls_key="k").tls_source()
    assert (files.cert_file, files.key_file) == ("c", "k")
    params = ServeConfig(**BASE, tls_cert_ssm_parameter="/c", tls_key_ssm_parameter="/k").tls_source()
    assert (params.cert_parameter, params.key_parameter) == ("/c", "/k")
    assert ServeConfig(**BASE, insecure_plain_http=True, drain_timeout=5).drain_timeout == 5
    with pytest.raises(ValueError, match="--drain-timeout must be positive"):
        ServeConfig(**BASE, insecure_plain_http=True, drain_timeout=0)
