"""The serving host of the simulated stack, booted from the user data `pulumi up` would give it.

Its `stratus-serve.service` runs `serve.sh` in the host's namespace: the private address from the
host's metadata service (IMDSv2), the token from SSM, the model from the models bucket where
`stratus remote --export` published it; a stock `tritonclient` request answers on that address,
and a newly published version is picked up without a failed request.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

import sim.host
import sim.stack
from runtime.remote.nodes import export_script
from sim.serve import upload_bundle, user_data
from sim.transport import LocalTransport

MODEL = "mlp-binary"  # the preset the e2e launch trains, published under its name
PORT = 8080


def _latest(stack) -> int:
    body = stack.client("s3").get_object(Bucket=stack.outputs["models_bucket"], Key=f"models/{MODEL}/LATEST")["Body"]
    return int(body.read().decode().strip())


def _wait_200(url: str, token: str | None = None, timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers 200 (with the bearer token when given)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - the sim's address
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as r:  # noqa: S310 - the sim's address
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.fixture(scope="session")
def serving_host(sim_stack, e2e_run):
    """(base URL, token): the serving host booted after the e2e launch published a version."""
    assert e2e_run.code == 0
    outputs = sim_stack.outputs
    upload_bundle(sim_stack.root, outputs)
    text = user_data(outputs, model_name=MODEL, port=PORT, grpc_port=8001)
    code = sim.host.boot(sim_stack.root, sim.stack.SERVING_ID, text)
    root = sim_stack.root / sim.stack.SERVING_ID
    assert code == 0, (root / "cloud-init-output.log").read_text()[-3000:]
    url = f"http://{outputs['serving_private_ip']}:{PORT}"
    _wait_200(f"{url}/v2/health/live")
    token = sim_stack.client("ssm").get_parameter(Name=outputs["serving_token_parameter"], WithDecryption=True)
    return url, token["Parameter"]["Value"]


def _infer(url: str, token: str, rows: np.ndarray):
    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"), network_timeout=10.0)
    try:
        inp = httpclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=True)
        return client.infer(MODEL, [inp], headers={"Authorization": f"Bearer {token}"})
    finally:
        client.close()


def test_the_serving_host_boots_from_its_user_data_and_answers_on_its_private_address(sim_stack, serving_host):
    url, token = serving_host
    root = sim_stack.root / sim.stack.SERVING_ID
    unit = (root / "systemd" / "stratus-serve.service").read_text()
    assert "ExecStart=/opt/stratus/serve.sh" in unit
    journal = (root / "journal" / "stratus-serve.service.log").read_text()
    ip = sim_stack.outputs["serving_private_ip"]
    assert f"on http://{ip}:{PORT}" in journal and "token from SSM parameter" in journal
    assert token not in journal
    # bound to the private address from the metadata service only, not to every interface
    netns = sim_stack.sim["serving"]["netns"]
    probe = f"import socket; s = socket.socket(); s.settimeout(2); print(s.connect_ex(('127.0.0.1', {PORT})))"
    inside = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", probe], capture_output=True, text=True)
    assert inside.stdout.strip() not in ("", "0"), inside
    request = urllib.request.Request(f"{url}/v2/models/{MODEL}")  # noqa: S310 - the sim's address
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 - the sim's address
    assert denied.value.code == 401


def test_the_published_export_answers_a_stock_tritonclient_request(sim_stack, serving_host):
    url, token = serving_host
    _wait_200(f"{url}/v2/health/ready", token)
    version = _latest(sim_stack)
    head = sim_stack.client("s3").head_object(
        Bucket=sim_stack.outputs["models_bucket"], Key=f"models/{MODEL}/{version}/model.onnx"
    )
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", sim_stack.outputs["kms_key_arn"])
    rows = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    result = _infer(url, token, rows)
    probs = result.as_numpy("probability")
    assert probs.shape == (3, 1) and np.all((probs >= 0) & (probs <= 1))
    assert result.get_response()["model_version"] == str(version)


def test_a_newly_published_version_is_picked_up_without_a_failed_request(sim_stack, serving_host, e2e_run):
    url, token = serving_host
    _wait_200(f"{url}/v2/health/ready", token)
    before = _latest(sim_stack)
    rows = np.ones((1, 1000), dtype=np.float32)
    seen, failures, stop = [], [], threading.Event()

    def traffic() -> None:  # bounded: at most 600 requests, stops with the test
        for _ in range(600):
            if stop.is_set():
                return
            try:
                seen.append(_infer(url, token, rows).get_response()["model_version"])
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                failures.append(repr(e))
            time.sleep(0.1)

    load = threading.Thread(target=traffic)
    load.start()
    try:
        transport = LocalTransport(sim_stack.root)
        node0 = sim_stack.outputs["trainer_instance_ids"][0]
        command = transport.send(node0, export_script(e2e_run.launch.sent_job, MODEL), comment="publish", timeout_s=600)
        deadline = time.monotonic() + 600
        while (res := transport.get_command_invocation(CommandId=command, InstanceId=node0))["Status"] == "InProgress":
            assert time.monotonic() < deadline
            time.sleep(1)
        assert res["Status"] == "Success", res["StandardOutputContent"][-3000:] + res["StandardErrorContent"][-3000:]
        after = _latest(sim_stack)
        assert after == before + 1
        deadline = time.monotonic() + 60  # the server polls LATEST every 10 s
        while str(after) not in seen and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        load.join(timeout=60)
    assert failures == []
    assert seen and str(after) in seen, json.dumps(seen[-5:])
    assert seen.index(str(after)) > 0 and set(seen[: seen.index(str(after))]) <= {str(before)}
