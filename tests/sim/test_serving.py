"""The serving hosts of the simulated stack, booted from the user data `pulumi up` would give them.

Two hosts (the Auto Scaling group's part: `sim.serve`) behind the load balancer stand-in
(`sim.balancer`: TCP pass-through, round robin, HTTPS readiness checks). Each host's
`stratus-serve.service` runs `serve.sh` in its namespace: the private address from the host's
metadata service (IMDSv2), the token and the TLS pair from the emulated SSM, the model from the
models bucket where `stratus remote --export` published it. Stock `tritonclient` HTTP and gRPC
clients with `ssl=True` and the stack's CA answer through the load balancer; one host is replaced
(launch, healthy, deregister, drain, terminate) while 10 requests a second flow, with no failed
request; a newly published version reaches every host.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

import sim.balancer
import sim.stack
from infra.builders.userdata import SERVE_UNIT
from runtime.remote.nodes import export_script
from sim import serve
from sim.transport import LocalTransport
from tests.runtime.serve.test_grpc import CHECKS, client_env  # noqa: F401 (the fixture)

MODEL = "mlp-binary"  # the preset the e2e launch trains, published under its name
PORT = sim.stack.SERVING_PORT
RATE_HZ = 10


@dataclass
class Serving:
    """The simulated serving fleet: load balancer address, CA file, token, user data, host ids."""

    outputs: dict
    ca: Path
    token: str
    user_data: str
    hosts: list[str]

    @property
    def lb(self) -> str:
        return self.outputs["serving_url"].removeprefix("https://")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _latest(stack) -> int:
    body = stack.client("s3").get_object(Bucket=stack.outputs["models_bucket"], Key=f"models/{MODEL}/LATEST")["Body"]
    return int(body.read().decode().strip())


@pytest.fixture(scope="session")
def serving(sim_stack, e2e_run, tmp_path_factory):
    """Two serving hosts booted after the e2e launch published a version, healthy behind the balancer."""
    assert e2e_run.code == 0
    outputs = sim_stack.outputs
    ca = tmp_path_factory.mktemp("serving-ca") / "ca.pem"
    ca.write_text(outputs["serving_ca_certificate"])
    serve.upload_bundle(sim_stack.root, outputs)
    text = serve.user_data(outputs, model_name=MODEL)
    with ThreadPoolExecutor(2) as pool:
        hosts = list(pool.map(lambda _: serve.launch_host(sim_stack.root, text), range(2)))
    for iid in hosts:
        serve.wait_healthy(sim_stack.root, iid)
    token = sim_stack.client("ssm").get_parameter(Name=outputs["serving_token_parameter"], WithDecryption=True)
    return Serving(outputs, ca, token["Parameter"]["Value"], text, hosts)


def _triton(serving: Serving, address: str | None = None) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        address or serving.lb, ssl=True, ssl_options={"ca_certs": str(serving.ca)}, network_timeout=10.0
    )


def _infer(serving: Serving, rows: np.ndarray, address: str | None = None):
    """One request on a new connection (the balancer routes connections, not requests)."""
    client = _triton(serving, address)
    try:
        inp = httpclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=True)
        return client.infer(MODEL, [inp], headers=serving.auth)
    finally:
        client.close()


class Traffic:
    """`RATE_HZ` requests a second through the load balancer until stopped (at most `max_s`)."""

    def __init__(self, serving: Serving, max_s: float = 300.0):
        self.serving, self.max_s = serving, max_s
        self.seen: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        rows = np.ones((1, 1000), dtype=np.float32)
        start = time.monotonic()
        for i in range(int(self.max_s * RATE_HZ)):
            if self.stop.is_set():
                return
            try:
                self.seen.append(_infer(self.serving, rows).get_response()["model_version"])
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.failures.append(f"{time.monotonic() - start:.1f} s: {e!r}")
            time.sleep(max(0.0, start + (i + 1) / RATE_HZ - time.monotonic()))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_each_serving_host_boots_from_its_user_data_with_tls_from_ssm(sim_stack, serving):
    for iid in serving.hosts:
        root = sim_stack.root / iid
        unit = (root / "systemd" / SERVE_UNIT).read_text()
        assert "ExecStart=/opt/stratus/serve.sh" in unit
        journal = (root / "journal" / f"{SERVE_UNIT}.log").read_text()
        ip = serve.host_ip(sim_stack.root, iid)
        assert f"on https://{ip}:{PORT}" in journal and "token from SSM parameter" in journal
        assert sim.stack.TLS_CERT_PARAMETER in journal and "--insecure-plain-http" not in unit + journal
        assert serving.token not in journal and "PRIVATE KEY" not in journal
        # bound to the private address from the metadata service only, not to every interface
        netns = sim.stack.read_sim_file(sim_stack.root)["serving_hosts"][iid]["netns"]
        probe = f"import socket; s = socket.socket(); s.settimeout(2); print(s.connect_ex(('127.0.0.1', {PORT})))"
        inside = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", probe], capture_output=True, text=True)
        assert inside.stdout.strip() not in ("", "0"), inside
    # through the load balancer: TLS verified with the stack's CA, the token still required
    with httpx.Client(base_url=serving.outputs["serving_url"], verify=str(serving.ca), timeout=10) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get(f"/v2/models/{MODEL}").status_code == 401
        assert c.get(f"/v2/models/{MODEL}", headers=serving.auth).status_code == 200


def test_stock_tritonclients_over_tls_answer_through_the_balancer_and_fail_without_the_ca(
    sim_stack,
    serving,
    client_env,  # noqa: F811 (the fixture)
    tmp_path,
):
    before = sim.balancer.state(Path(sim_stack.sim["balancer"]["dir"]))
    rows = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    version = _latest(sim_stack)
    for _ in range(4):  # new connections: round robin puts at least one on each host
        result = _infer(serving, rows)
        probs = result.as_numpy("probability")
        assert probs.shape == (3, 1) and np.all((probs >= 0) & (probs <= 1))
        assert result.get_response()["model_version"] == str(version)
    after = sim.balancer.state(Path(sim_stack.sim["balancer"]["dir"]))
    for iid in serving.hosts:
        ip = serve.host_ip(sim_stack.root, iid)
        assert after[ip]["connections"] > before[ip]["connections"], (iid, after)
    stranger = httpclient.InferenceServerClient(serving.lb, ssl=True, network_timeout=10.0)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            stranger.is_server_live()
    finally:
        stranger.close()
    # gRPC: the stock client in its own process (protobuf 6), ssl=True with the CA, through the balancer
    np.save(tmp_path / "x.npy", rows)
    target, token = serving.outputs["serving_grpc_target"], serving.token
    cmd = [sys.executable, str(CHECKS), "tls", target, token, MODEL, str(tmp_path / "x.npy"), str(serving.ca)]
    proc = subprocess.run([*cmd, "probability"], env=client_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ready"] is True and out["version"] == str(version)
    np.testing.assert_allclose(np.asarray(out["output"]), probs, rtol=1e-6)
    assert out["without_ca"] is not None and out["without_ca"][0] == "StatusCode.UNAVAILABLE", out["without_ca"]


def test_a_host_is_replaced_under_steady_load_without_a_failed_request(sim_stack, serving):
    old = serving.hosts[0]
    started = time.monotonic()
    with Traffic(serving) as traffic:
        time.sleep(2)
        new, code = serve.replace_host(sim_stack.root, old, serving.user_data)
        time.sleep(3)  # the new pair carries the load on its own
    elapsed = time.monotonic() - started
    serving.hosts[0] = new
    assert traffic.failures == [], traffic.failures[:5]
    assert len(traffic.seen) >= 0.7 * RATE_HZ * elapsed, (len(traffic.seen), elapsed)
    assert code == 0  # the old server drained and exited cleanly on SIGTERM
    journal = (sim_stack.root / old / "journal" / f"{SERVE_UNIT}.log").read_text()
    assert "draining" in journal and "status=0" in journal, journal[-2000:]
    hosts = sim.stack.read_sim_file(sim_stack.root)["serving_hosts"]
    assert old not in hosts and set(hosts) == set(serving.hosts)
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert sim_stack.sim["balancer"]["netns"] in names
    state = sim.balancer.state(Path(sim_stack.sim["balancer"]["dir"]))
    assert set(state) == {serve.host_ip(sim_stack.root, iid) for iid in serving.hosts}
    assert state[serve.host_ip(sim_stack.root, new)]["connections"] > 0


def test_a_newly_published_version_reaches_every_host_without_a_failed_request(sim_stack, serving, e2e_run):
    before = _latest(sim_stack)
    rows = np.ones((1, 1000), dtype=np.float32)
    with Traffic(serving) as traffic:
        transport = LocalTransport(sim_stack.root)
        node0 = sim_stack.node_ids()[0]
        command = transport.send(node0, export_script(e2e_run.launch.sent_job, MODEL), comment="publish", timeout_s=600)
        deadline = time.monotonic() + 600
        while (res := transport.get_command_invocation(CommandId=command, InstanceId=node0))["Status"] == "InProgress":
            assert time.monotonic() < deadline
            time.sleep(1)
        assert res["Status"] == "Success", res["StandardOutputContent"][-3000:] + res["StandardErrorContent"][-3000:]
        after = _latest(sim_stack)
        assert after == before + 1
        pending = {iid: f"{serve.host_ip(sim_stack.root, iid)}:{PORT}" for iid in serving.hosts}
        deadline = time.monotonic() + 60  # each server polls LATEST every 10 s
        while pending and time.monotonic() < deadline:
            for iid, address in list(pending.items()):  # each host directly: the certificate names it
                if _infer(serving, rows, address).get_response()["model_version"] == str(after):
                    del pending[iid]
            time.sleep(0.5)
        assert not pending, f"hosts still on version {before}: {sorted(pending)}"
        time.sleep(1)
    assert traffic.failures == [], traffic.failures[:5]
    seen = traffic.seen
    assert seen and str(after) in seen, json.dumps(seen[-5:])
    assert set(seen) <= {str(before), str(after)}
