"""TLS on both ports of a real `stratus serve` process, with a CA made at test time (certs.py).

Stock clients that trust the CA answer (httpx, tritonclient.http `ssl=True`, tritonclient.grpc
`ssl=True` with the CA file, grpc's `ssl_channel_credentials`, the OpenAI client over an httpx
client); the same clients without the CA fail verification; TLS 1.1 and non-AEAD ciphers are
refused by both ports; `kill -HUP` swaps the certificate for new connections; bad material is
refused at start (exit 2) naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import grpc
import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from runtime.repository.publish import publish
from runtime.serve.grpc_proto import SERVICE, messages
from runtime.serve.tls import TlsError, TlsSource, load_material
from sim.pki import CertPair, LocalCA
from tests.conftest import free_port
from tests.runtime.serve.conftest import MODEL, REPO_ROOT, TOKEN, reference_output, start_server, stop_server
from tests.runtime.serve.test_grpc import CHECKS, client_env  # noqa: F401 (the fixture)
from tests.support import NUM_FEATURES

X = np.random.default_rng(5).standard_normal((2, NUM_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[LocalCA, CertPair]:
    root = tmp_path_factory.mktemp("pki")
    ca = LocalCA.create(root / "ca")
    return ca, ca.issue(root / "server")


@pytest.fixture(scope="module")
def tls_server(pki, artifacts, tmp_path_factory):
    """The server over TLS on HTTP and gRPC, its certificate from `pki`."""
    ca, pair = pki
    root = tmp_path_factory.mktemp("serve-tls")
    repo = root / "repo"
    assert publish(artifacts[1], str(repo), model_name=MODEL) == 1
    token_file = root / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    grpc_port = free_port()
    args = ["--token-file", str(token_file), "--grpc-port", str(grpc_port)]
    srv = start_server(str(repo), root / "server.log", args, env, tls=(pair.cert, pair.key, ca.cert_path))
    srv.grpc_port = grpc_port
    srv.artifacts = {1: artifacts[1]}
    try:
        srv.wait_for(srv.is_ready, "readiness over TLS")
        yield srv
    finally:
        stop_server(srv)


def _infer_body() -> dict:
    return {"inputs": [{"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}


def grpc_server_ready(target: str, token: str, root_certificates: bytes | None) -> bool:
    """ServerReady over a TLS channel (grpc's own client, the server's message classes)."""
    m = messages()
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    with grpc.secure_channel(target, credentials) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ServerReady",
            request_serializer=m.ServerReadyRequest.SerializeToString,
            response_deserializer=m.ServerReadyResponse.FromString,
        )
        return call(m.ServerReadyRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10).ready


def handshake(port: int, ca: Path, *, versions=(None, None), ciphers: str | None = None) -> tuple[str, str, dict]:
    """One TLS handshake with 127.0.0.1:port: (version, cipher, peer certificate); raises ssl.SSLError."""
    context = ssl.create_default_context(cafile=str(ca))
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated in the client too: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        if versions[0]:
            context.minimum_version = versions[0]
        if versions[1]:
            context.maximum_version = versions[1]
    if ciphers:
        context.set_ciphers(ciphers)
    context.set_alpn_protocols(["h2", "http/1.1"])  # grpc-core wants h2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.cipher()[0], tls.getpeercert()


def _common_name(peer: dict) -> str:
    return dict(item[0] for item in peer["subject"])["commonName"]


# --- stock clients -----------------------------------------------------------------------------


def test_https_answers_clients_that_trust_the_ca(tls_server):
    assert tls_server.url.startswith("https://")
    with httpx.Client(base_url=tls_server.url, verify=str(tls_server.ca), headers=tls_server.auth) as client:
        assert client.get("/v2/health/ready").status_code == 200
        response = client.post(f"/v2/models/{MODEL}/infer", json=_infer_body())
    assert response.status_code == 200, response.text
    expected = reference_output(tls_server.artifacts[1], X)
    np.testing.assert_allclose(np.asarray(response.json()["outputs"][0]["data"]).reshape(expected.shape), expected)

    triton = httpclient.InferenceServerClient(
        f"127.0.0.1:{tls_server.port}", ssl=True, ssl_options={"ca_certs": str(tls_server.ca)}
    )
    try:
        assert triton.is_server_ready(headers=tls_server.auth)
        tensor = httpclient.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = triton.infer(MODEL, [tensor], headers=tls_server.auth)
        np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-6)
    finally:
        triton.close()

    verified = httpx.Client(verify=str(tls_server.ca))
    models = openai.OpenAI(base_url=f"{tls_server.url}/v1", api_key=TOKEN, http_client=verified, max_retries=0)
    assert [model.id for model in models.models.list()] == [MODEL]


def test_clients_without_the_ca_fail_verification(tls_server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.url}/v2/health/live", timeout=10)
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{tls_server.port}", ssl=True)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            triton.is_server_live()
    finally:
        triton.close()
    with pytest.raises(grpc.RpcError) as refused:
        grpc_server_ready(tls_server.grpc_target, TOKEN, root_certificates=None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP to the TLS port gets no HTTP answer
        httpx.get(tls_server.url.replace("https://", "http://") + "/v2/health/live", timeout=10)


def test_grpc_over_tls_answers_clients_that_trust_the_ca(tls_server, client_env, tmp_path):  # noqa: F811
    assert grpc_server_ready(tls_server.grpc_target, TOKEN, tls_server.ca.read_bytes())
    np.save(tmp_path / "x.npy", X)
    cmd = [sys.executable, str(CHECKS), "tls", tls_server.grpc_target, TOKEN, MODEL, str(tmp_path / "x.npy")]
    proc = subprocess.run([*cmd, str(tls_server.ca)], env=client_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ready"] is True
    np.testing.assert_allclose(np.asarray(out["output"]), reference_output(tls_server.artifacts[1], X), rtol=1e-6)
    assert out["without_ca"] is not None and out["without_ca"][0] == "StatusCode.UNAVAILABLE", out["without_ca"]


# --- protocol versions and ciphers -------------------------------------------------------------

REFUSED = [
    ("tls-1.1", (ssl.TLSVersion.MINIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_1), "DEFAULT:@SECLEVEL=0"),
    ("tls-1.2-cbc", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"),
    ("tls-1.2-cbc-sha384", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), "ECDHE-ECDSA-AES256-SHA384"),
]
ACCEPTED = [
    ("tls-1.2-aead", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), None),
    ("tls-1.3", (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3), None),
]


@pytest.mark.parametrize("port_name", ["http", "grpc"])
@pytest.mark.parametrize(("case", "versions", "ciphers"), REFUSED, ids=[c[0] for c in REFUSED])
def test_old_protocols_and_non_aead_ciphers_are_refused(tls_server, port_name, case, versions, ciphers):
    port = tls_server.port if port_name == "http" else tls_server.grpc_port
    with pytest.raises(ssl.SSLError):
        handshake(port, tls_server.ca, versions=versions, ciphers=ciphers)


@pytest.mark.parametrize("port_name", ["http", "grpc"])
@pytest.mark.parametrize(("case", "versions", "ciphers"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_modern_handshakes_use_ecdhe_and_aead(tls_server, port_name, case, versions, ciphers):
    """The control of the test above: the same handshake code, allowed settings, succeeds."""
    port = tls_server.port if port_name == "http" else tls_server.grpc_port
    version, cipher, _ = handshake(port, tls_server.ca, versions=versions, ciphers=ciphers)
    assert version in ("TLSv1.2", "TLSv1.3")
    assert cipher.startswith("TLS_") or (cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher))


# --- reload --------------------------------------------------------------------------------------


def _hup_and_wait(server, marker: str) -> str:
    before = server.log_path.read_text().count(marker)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(lambda: server.log_path.read_text().count(marker) > before, marker)
    return [line for line in server.log_path.read_text().splitlines() if marker in line][-1]


def test_sighup_reloads_the_certificate_for_new_connections_on_both_ports(tls_server, pki, tmp_path):
    ca, served = pki
    assert _common_name(handshake(tls_server.port, ca.cert_path)[2]) == "stratus server"
    renewed = ca.issue(tmp_path / "renewed", common_name="stratus renewed server")
    keep = tls_server.client()  # a connection opened before the reload keeps working
    assert keep.get("/v2/health/ready", headers=tls_server.auth).status_code == 200
    try:
        shutil.copyfile(renewed.cert, served.cert)
        shutil.copyfile(renewed.key, served.key)
        line = _hup_and_wait(tls_server, "reloaded from files")
        assert "CN=stratus renewed server" in line
        for port in (tls_server.port, tls_server.grpc_port):
            assert _common_name(handshake(port, ca.cert_path)[2]) == "stratus renewed server", port
        assert grpc_server_ready(tls_server.grpc_target, TOKEN, ca.cert_path.read_bytes())
        assert keep.get("/v2/health/ready", headers=tls_server.auth).status_code == 200

        # a key of another certificate: refused, logged naming the file, the current one kept
        other = ec.generate_private_key(ec.SECP256R1())
        served.key.write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        failure = _hup_and_wait(tls_server, "TLS reload failed")
        assert f"--tls-key {served.key}" in failure and "does not belong" in failure
        assert "PRIVATE KEY" not in tls_server.log_path.read_text()
        for port in (tls_server.port, tls_server.grpc_port):
            assert _common_name(handshake(port, ca.cert_path)[2]) == "stratus renewed server", port
    finally:
        keep.close()
        shutil.copyfile(renewed.key, served.key)  # the served files are a valid pair again


# --- start-up refusals ---------------------------------------------------------------------------


def _start(tmp_path: Path, *tls_args: str) -> subprocess.CompletedProcess:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    cmd = [sys.executable, "-m", "runtime", "serve", "--repo", str(tmp_path), "--model", MODEL, "--port", "1"]
    cmd += ["--token-file", str(token), *tls_args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_start_without_tls_material_is_refused_naming_both_ways(tmp_path):
    proc = _start(tmp_path)
    assert proc.returncode == 2
    assert "no TLS certificate" in proc.stderr
    assert "--tls-cert PATH --tls-key PATH" in proc.stderr and "--insecure-plain-http" in proc.stderr


@pytest.mark.parametrize("problem", ["expired", "mismatched-key", "not-pem"])
def test_bad_certificate_files_exit_2_naming_the_file(tmp_path, pki, problem):
    ca, served = pki
    now = datetime.now(UTC)
    if problem == "expired":
        pair = ca.issue(tmp_path / "old", not_before=now - timedelta(days=60), not_after=now - timedelta(days=1))
        named, message = pair.cert, "expired on"
    elif problem == "mismatched-key":
        pair = CertPair(ca.issue(tmp_path / "a").cert, ca.issue(tmp_path / "b").key)
        named, message = pair.key, "does not belong to the certificate"
    else:
        pair = ca.issue(tmp_path / "c")
        pair.cert.write_text("not a certificate\n")
        named, message = pair.cert, "is not a PEM certificate"
    proc = _start(tmp_path, "--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and str(named) in proc.stderr, proc.stderr


def test_material_from_ssm_parameters(aws_env, pki):
    ca, served = pki
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/t/tls/cert", Value=served.cert.read_text(), Type="String")
    ssm.put_parameter(Name="/t/tls/key", Value=served.key.read_text(), Type="SecureString")
    material = load_material(TlsSource(cert_parameter="/t/tls/cert", key_parameter="/t/tls/key"))
    assert material.cert_pem == served.cert.read_bytes() and material.subject.startswith("CN=")
    with pytest.raises(TlsError, match="--tls-key-ssm-parameter /t/tls/missing: GetParameter failed"):
        load_material(TlsSource(cert_parameter="/t/tls/cert", key_parameter="/t/tls/missing"))
