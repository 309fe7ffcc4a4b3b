"""Open Inference Protocol routes over HTTP, in JSON and binary mode, with the stock Triton client."""

from __future__ import annotations

import gzip
import json
import re
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.runtime.serve.conftest import MODEL, reference_output
from tests.support import NUM_FEATURES


def _x(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, NUM_FEATURES)).astype(np.float32)


def _expected(server, x: np.ndarray) -> np.ndarray:
    return reference_output(server.artifacts[server.serving_version], x)


def test_health_and_server_metadata(server):
    with server.client() as c:
        live = c.get("/v2/health/live")
        assert live.status_code == 200 and live.content == b""
        assert c.get("/v2/health/ready", headers=server.auth).status_code == 200
        meta = c.get("/v2", headers=server.auth).json()
    assert meta["name"] == "stratus" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_ready_and_config(server):
    version = str(server.serving_version)
    with server.client(headers=server.auth) as c:
        meta = c.get(f"/v2/models/{MODEL}").json()
        assert meta == {
            "name": MODEL,
            "versions": [version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, NUM_FEATURES]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1]}],
        }
        assert c.get(f"/v2/models/{MODEL}/versions/{version}").json() == meta
        assert c.get(f"/v2/models/{MODEL}/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/{version}/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}/versions/999/ready").status_code == 404
        config = c.get(f"/v2/models/{MODEL}/config").json()
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [-1, NUM_FEATURES]}]


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_infer(server, nested: bool):
    x = _x(3)
    data = x.tolist() if nested else x.ravel().tolist()
    body = {"id": "req-1", "inputs": [{"name": "input", "shape": [3, NUM_FEATURES], "datatype": "FP32", "data": data}]}
    with server.client(headers=server.auth) as c:
        r = c.post(f"/v2/models/{MODEL}/infer", json=body)
        r_versioned = c.post(f"/v2/models/{MODEL}/versions/{server.serving_version}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["model_version"] == str(server.serving_version)
    assert out["id"] == "req-1"
    (tensor,) = out["outputs"]
    assert tensor["name"] == "output" and tensor["datatype"] == "FP32" and tensor["shape"] == [3, 1]
    np.testing.assert_allclose(np.array(tensor["data"]).reshape(3, 1), _expected(server, x), rtol=1e-5)
    assert r_versioned.json()["outputs"] == out["outputs"]


def test_binary_extension_by_hand(server):
    """The binary tensor extension per the spec, both directions, without a client library."""
    x = _x(4, seed=1)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [4, NUM_FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    with server.client(headers=server.auth) as c:
        r = c.post(
            f"/v2/models/{MODEL}/infer",
            content=header + x.astype("<f4").tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )
    assert r.status_code == 200, r.text
    json_length = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:json_length])
    (tensor,) = meta["outputs"]
    assert tensor["parameters"] == {"binary_data_size": 16} and "data" not in tensor
    values = struct.unpack("<4f", r.content[json_length : json_length + 16])
    np.testing.assert_allclose(np.array(values).reshape(4, 1), _expected(server, x), rtol=1e-6)
    assert len(r.content) == json_length + 16


def test_binary_output_requested_for_json_input(server):
    x = _x(2, seed=2)
    body = {
        "inputs": [{"name": "input", "shape": [2, NUM_FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": {"binary_data_output": True},
    }
    with server.client(headers=server.auth) as c:
        r = c.post(f"/v2/models/{MODEL}/infer", json=body)
    json_length = int(r.headers["inference-header-content-length"])
    assert np.frombuffer(r.content[json_length:], "<f4").shape == (2,)


def test_gzip_request_body(server):
    x = _x(2, seed=3)
    body = {"inputs": [{"name": "input", "shape": [2, NUM_FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}]}
    with server.client(headers=server.auth) as c:
        r = c.post(
            f"/v2/models/{MODEL}/infer",
            content=gzip.compress(json.dumps(body).encode()),
            headers={"Content-Encoding": "gzip"},
        )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]), _expected(server, x).ravel(), rtol=1e-5)


@pytest.fixture
def triton_client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_stock_triton_client(server, triton_client, binary: bool, compression):
    x = _x(5, seed=4)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = triton_client.infer(
        MODEL,
        [tensor],
        outputs=[triton.InferRequestedOutput("output", binary_data=binary)],
        headers=server.auth,
        request_compression_algorithm=compression,
    )
    np.testing.assert_allclose(result.as_numpy("output"), _expected(server, x), rtol=1e-5)
    response = result.get_response()
    assert response["model_version"] == str(server.serving_version)
    assert ("parameters" in response["outputs"][0]) is binary


def test_stock_triton_client_health_metadata_and_auth(server, triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready(headers=server.auth)
    assert triton_client.is_model_ready(MODEL, headers=server.auth)
    assert triton_client.get_model_metadata(MODEL, headers=server.auth)["name"] == MODEL
    assert triton_client.is_server_ready()  # public: the load balancer's health check sends no token
    assert not triton_client.is_model_ready(MODEL)
    with pytest.raises(InferenceServerException, match="bearer token"):
        triton_client.get_model_metadata(MODEL)


def test_metrics_and_access_log(server):
    with server.client(headers=server.auth) as c:
        assert c.get("/v2/models/nope").status_code == 404
        text = c.get("/metrics").text
    assert re.search(r'^stratus_requests_total\{code="200",route="infer"\} [1-9]', text, re.M)
    assert re.search(r'^stratus_request_errors_total\{code="404"\} [1-9]', text, re.M)
    assert re.search(r'^stratus_request_duration_seconds_bucket\{le="0\.01",route="infer"\} [1-9]', text, re.M)
    assert re.search(rf"^stratus_model_version {server.serving_version}\.0$", text, re.M)
    assert re.search(r"^stratus_model_ready 1\.0$", text, re.M)
    assert "stratus_model_reload_failures" in text
    server.wait_for(lambda: "/v2/models/nope" in server.log_path.read_text(), "access log line")
    access = [r for r in server.log_records() if r.get("logger") == "stratus.access"]
    nope = [r for r in access if r["path"] == "/v2/models/nope"][-1]
    assert nope["status"] == 404 and nope["method"] == "GET" and nope["ms"] >= 0
    assert server.token not in server.log_path.read_text()
