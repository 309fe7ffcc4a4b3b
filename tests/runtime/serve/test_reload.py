"""Hot reload under load (zero failed requests, tampered version rejected) and serving from S3."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid

import boto3
import httpx
import numpy as np
import pytest

from runtime.repository.artifact import atomic_write
from runtime.repository.publish import publish
from tests.runtime.serve.conftest import MODEL, TOKEN, reference_output, start_server, stop_server
from tests.support import NUM_FEATURES, aws_test_env

X = np.random.default_rng(7).standard_normal((2, NUM_FEATURES)).astype(np.float32)
BODY = {"inputs": [{"name": "input", "shape": [2, NUM_FEATURES], "datatype": "FP32", "data": X.ravel().tolist()}]}


class LoadClient(threading.Thread):
    """Sends infer requests back to back over one keep-alive connection; records every outcome."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.results: list[tuple[str, np.ndarray]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with self.server.client(headers=self.server.auth) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"/v2/models/{MODEL}/infer", json=BODY)
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text}")
                    continue
                body = r.json()
                self.results.append((body["model_version"], np.array(body["outputs"][0]["data"]).reshape(2, 1)))

    def wait_for_more(self, count: int, timeout: float = 30.0) -> None:
        target = len(self.results) + count
        deadline = time.monotonic() + timeout
        while len(self.results) < target:
            assert time.monotonic() < deadline, f"load client stalled; failures: {self.failures[:5]}"
            time.sleep(0.02)


def _metric(server, pattern: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=server.auth, timeout=5).text
    match = re.search(pattern + r" ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_hot_reload_under_load_good_then_tampered(server, artifacts):
    repo = server.repo
    before = server.serving_version
    expected = {str(before): reference_output(server.artifacts[before], X)}
    failures_metric = r'^stratus_model_reload_failures_total\{reason="verification"\}'
    failures_before = _metric(server, failures_metric)
    client = LoadClient(server)
    client.start()
    try:
        client.wait_for_more(20)
        good = publish(artifacts[2], repo, model_name=MODEL)
        expected[str(good)] = reference_output(artifacts[2], X)
        server.wait_for(lambda: client.results[-1][0] == str(good), f"switch to version {good}")
        server.serving_version, server.artifacts[good] = good, artifacts[2]
        client.wait_for_more(20)

        # A tampered version appears in the repository (bypassing publish, as a compromised or
        # corrupted bucket would): same layout, model bytes changed after the manifest was written.
        bad = good + 1
        target = os.path.join(repo, MODEL, str(bad))
        shutil.copytree(artifacts[3], target)
        with open(os.path.join(target, "model.onnx"), "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        atomic_write(os.path.join(repo, MODEL, "LATEST"), f"{bad}\n".encode())
        server.wait_for(lambda: _metric(server, failures_metric) > failures_before, "the tampered version's rejection")
        client.wait_for_more(20)
    finally:
        client.stop.set()
        client.join(timeout=30)

    assert client.failures == []
    versions = [v for v, _ in client.results]
    switch = versions.index(str(good))
    assert set(versions[:switch]) == {str(before)} and set(versions[switch:]) == {str(good)}
    for version, output in client.results:  # each answer computed by the version it names
        np.testing.assert_allclose(output, expected[version], rtol=1e-5)
    assert _metric(server, r"^stratus_model_version") == good
    assert server.is_ready()
    rejected = [r for r in server.log_records() if f"rejected {MODEL} version {bad}" in r.get("message", "")]
    assert rejected and rejected[0]["level"] == "error" and "model.onnx: modified" in rejected[0]["message"]


# --- S3 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server(aws_server, tmp_path_factory):
    """A server on an empty s3:// repository (moto), token from an SSM SecureString."""
    env = aws_test_env(aws_server)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("STRATUS_SERVE_TOKEN", raising=False)
        key_arn = boto3.client("kms").create_key(Description="models")["KeyMetadata"]["Arn"]
        bucket = f"models-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        parameter = f"/stratus/{bucket}/serving-token"
        boto3.client("ssm").put_parameter(Name=parameter, Value=TOKEN, Type="SecureString", KeyId=key_arn)
        uri = f"s3://{bucket}/models"
        log_path = tmp_path_factory.mktemp("serve-s3") / "server.log"
        args = ["--token-ssm-parameter", parameter, "--poll-interval", "0.3"]
        srv = start_server(uri, log_path, args, dict(os.environ))
        try:
            yield srv, key_arn
        finally:
            stop_server(srv)


def test_s3_ready_only_after_a_verified_version_then_hot_reload(s3_server, artifacts):
    server, key_arn = s3_server
    with server.client(headers=server.auth) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.post(f"/v2/models/{MODEL}/infer", json=BODY).status_code == 503
        assert publish(artifacts[1], server.repo, model_name=MODEL, kms_key_id=key_arn) == 1
        server.wait_for(server.is_ready, "readiness after the first S3 publish")
        r = c.post(f"/v2/models/{MODEL}/infer", json=BODY).json()
        assert r["model_version"] == "1"
        np.testing.assert_allclose(
            np.array(r["outputs"][0]["data"]).reshape(2, 1), reference_output(artifacts[1], X), rtol=1e-5
        )

        s3 = boto3.client("s3")
        bucket, prefix = server.repo[5:].split("/", 1)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        assert f"{prefix}/{MODEL}/1/model.onnx" in keys
        for key in keys:
            head = s3.head_object(Bucket=bucket, Key=key)
            assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn), key

        assert publish(artifacts[2], server.repo, model_name=MODEL, kms_key_id=key_arn) == 2
        server.wait_for(
            lambda: c.post(f"/v2/models/{MODEL}/infer", json=BODY).json()["model_version"] == "2", "S3 hot reload"
        )
    assert "token from SSM parameter" in server.log_path.read_text()


def test_a_latest_the_poller_cannot_parse_is_counted_and_polling_goes_on(server, artifacts):
    """LATEST holding "\u00b2" (a digit to `str.isdigit`, not to `int`) or 5,000 digits: each poll
    counts a `latest` reload failure and keeps serving; once LATEST is fixed, a new version is
    picked up (the poller is still running)."""
    latest = os.path.join(server.repo, MODEL, "LATEST")
    with open(latest, "rb") as f:
        original = f.read()
    metric = r'^stratus_model_reload_failures_total\{reason="latest"\}'
    for content in ("\u00b2\n".encode(), b"9" * 5000):
        before = _metric(server, metric)
        atomic_write(latest, content)
        server.wait_for(lambda b=before: _metric(server, metric) > b, f"a failed poll of LATEST = {content[:8]!r}")
        assert server.is_ready()
    atomic_write(latest, original)
    new = publish(artifacts[2], server.repo, model_name=MODEL)
    server.wait_for(lambda: _metric(server, r"^stratus_model_version") == new, f"version {new} served")
    server.serving_version, server.artifacts[new] = new, artifacts[2]
    assert "9999999999" not in server.log_path.read_text()  # LATEST's content is never logged
