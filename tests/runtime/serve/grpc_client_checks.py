"""The stock `tritonclient.grpc` client against a running server; prints one JSON object.

Run by tests/runtime/serve/test_grpc.py in a subprocess whose PYTHONPATH puts the protobuf 6
runtime of requirements/grpc-client.txt first (the client's stubs need it; the test process has
protobuf 5.29). Imports nothing from the project, so the versions cannot mix.

    python grpc_client_checks.py checks HOST:PORT TOKEN MODEL X.npy MAX_BATCH
    python grpc_client_checks.py load HOST:PORT TOKEN MODEL X.npy STOP_FILE MAX_SECONDS
    python grpc_client_checks.py tls HOST:PORT TOKEN MODEL X.npy CA_FILE [OUTPUT_NAME]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException


def _error(call) -> list | None:
    try:
        call()
    except InferenceServerException as e:
        return [str(e.status()), e.message()]
    return None


def _input(x: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def checks(url: str, token: str, model: str, x: np.ndarray, max_batch: int) -> dict:
    auth = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url)
    try:
        out: dict = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(headers=auth),
            "model_ready": client.is_model_ready(model, headers=auth),
            "metadata": client.get_model_metadata(model, headers=auth, as_json=True),
            "server_metadata": client.get_server_metadata(headers=auth, as_json=True),
        }
        result = client.infer(model, [_input(x)], outputs=[grpcclient.InferRequestedOutput("output")], headers=auth)
        out["output"] = result.as_numpy("output").tolist()
        out["version"] = result.get_response().model_version
        bad = {"authorization": "Bearer wrong-token-0123456789abcdef"}
        nan = x.copy()
        nan[0, 0] = np.nan
        big = np.zeros((max_batch + 1, x.shape[1]), np.float32)
        out["errors"] = {
            "no_token": _error(lambda: client.get_model_metadata(model)),
            "bad_token": _error(lambda: client.infer(model, [_input(x)], headers=bad)),
            "ready_no_token": _error(lambda: client.is_server_ready()),
            "nan": _error(lambda: client.infer(model, [_input(nan)], headers=auth)),
            "batch_cap": _error(lambda: client.infer(model, [_input(big)], headers=auth)),
            "shape": _error(lambda: client.infer(model, [_input(x[:, :-1].copy())], headers=auth)),
            "datatype": _error(lambda: client.infer(model, [_input(x.astype(np.float64), "FP64")], headers=auth)),
            "unknown_model": _error(lambda: client.infer("nope", [_input(x)], headers=auth)),
            "too_large": _error(
                lambda: client.infer(model, [_input(np.zeros((1, 1 << 20), np.float32))], headers=auth)
            ),
        }
        # tritonclient takes headers as a dict; a repeated entry needs its stub (the generated one)
        twice = [("authorization", f"Bearer {token}")] * 2
        try:
            client._client_stub.ServerReady(service_pb2.ServerReadyRequest(), metadata=twice)  # noqa: SLF001
            out["errors"]["duplicate_auth"] = None
        except Exception as e:  # grpc.RpcError
            out["errors"]["duplicate_auth"] = [str(e.code()), e.details()]
        return out
    finally:
        client.close()


def load(url: str, token: str, model: str, x: np.ndarray, stop_file: str, max_seconds: float) -> dict:
    """Infer back to back until `stop_file` exists (or max_seconds): every outcome counted."""
    auth = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url)
    versions: dict[str, int] = {}
    outputs: dict[str, list] = {}
    failures: list[str] = []
    deadline = time.monotonic() + max_seconds
    try:
        while not os.path.exists(stop_file) and time.monotonic() < deadline:
            try:
                result = client.infer(model, [_input(x)], headers=auth)
            except InferenceServerException as e:
                failures.append(f"{e.status()} {e.message()}")
                continue
            version = result.get_response().model_version
            if version not in versions:
                print(json.dumps({"first": version}), flush=True)
            versions[version] = versions.get(version, 0) + 1
            outputs.setdefault(version, result.as_numpy("output").tolist())
    finally:
        client.close()
    return {"versions": versions, "outputs": outputs, "failures": failures[:5], "num_failures": len(failures)}


def tls(url: str, token: str, model: str, x: np.ndarray, ca_file: str, output: str = "output") -> dict:
    """Over TLS: `ssl=True` with the CA answers; `ssl=True` with the system's roots only fails.
    (Also run by tests/sim/test_serving.py through the simulated stack's load balancer.)"""
    auth = {"authorization": f"Bearer {token}"}
    client = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=ca_file)
    try:
        result = client.infer(model, [_input(x)], outputs=[grpcclient.InferRequestedOutput(output)], headers=auth)
        out: dict = {"ready": client.is_server_ready(headers=auth), "output": result.as_numpy(output).tolist()}
        out["version"] = result.get_response().model_version
    finally:
        client.close()
    stranger = grpcclient.InferenceServerClient(url, ssl=True)
    try:
        out["without_ca"] = _error(lambda: stranger.is_server_ready(headers=auth, client_timeout=10))
    finally:
        stranger.close()
    return out


if __name__ == "__main__":
    mode, url, token, model, x_path, *rest = sys.argv[1:]
    x = np.load(x_path)
    if mode == "checks":
        print(json.dumps(checks(url, token, model, x, int(rest[0]))))
    elif mode == "tls":
        print(json.dumps(tls(url, token, model, x, *rest[:2])))
    else:
        print(json.dumps({"done": load(url, token, model, x, rest[0], float(rest[1]))}))
