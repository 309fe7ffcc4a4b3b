"""The simulated stack itself: what `up` makes is reachable and `down` removes all of it."""

from __future__ import annotations

import json
import os
import subprocess

import sim.nodes
import sim.stack
from runtime.remote.fleet import discover
from runtime.remote.outputs import read_outputs
from sim.transport import LocalTransport
from tests.sim.conftest import TEST_PREFIX, leftovers

PROBE = """
import socket, sys, urllib.request
print(urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=5).status)
s = socket.socket(); s.settimeout(3)
print(s.connect_ex((sys.argv[2], 1)))
"""


def test_up_makes_nodes_on_a_bridge_and_down_removes_everything(tmp_path, sim_stack):
    outputs = sim.stack.up(tmp_path, num_nodes=2, tag="t")
    described = json.loads((tmp_path / "sim.json").read_text())
    try:
        frozen = read_outputs(outputs_file=tmp_path / "outputs.json")
        assert frozen.num_nodes == 0 and frozen.autoscaling_group == sim.nodes.TRAINER_GROUP  # a group's stack
        stack = discover(LocalTransport(tmp_path), frozen, timeout_s=0)
        assert stack.instance_ids == ("sim-node0", "sim-node1") and stack.slots_per_node == 1
        assert stack.private_ips == tuple(described["nodes"][i]["ip"] for i in stack.instance_ids)
        lb = described["balancer"]["ip"]
        assert outputs["serving_url"] == f"https://{lb}:{sim.stack.SERVING_PORT}" and lb not in stack.private_ips
        assert outputs["serving_ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")
        ssm = sim.stack.client(tmp_path, "ssm")
        key = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [sim.stack.TLS_KEY_PARAMETER]}])
        assert (
            key["Parameters"][0]["Type"] == "SecureString" and key["Parameters"][0]["KeyId"] == outputs["kms_key_arn"]
        )
        assert not list(tmp_path.rglob("*.key")), "the server key is kept in SSM only"
        assert len(described["namespaces"]) == 3 and all(n.startswith(TEST_PREFIX) for n in described["namespaces"])
        node1 = described["nodes"]["sim-node1"]["netns"]
        endpoint = described["env"]["AWS_ENDPOINT_URL"]
        out = subprocess.run(
            ["ip", "netns", "exec", node1, "python3", "-c", PROBE, endpoint, stack.private_ips[0]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        # node 1 reaches the emulator, and node 0's address answers (port 1: refused, errno 111)
        assert out.stdout.split() == ["200", "111"], out.stderr
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        assert f"{described['gateway']}:4566" in listening and "0.0.0.0:4566" not in listening
    finally:
        sim.stack.down(tmp_path)
    assert not leftovers(described)


def test_the_front_door_points_the_launchers_own_aws_calls_at_the_emulator(tmp_path, monkeypatch):
    from stratus.remote import local_transport

    env = {"AWS_ENDPOINT_URL": "http://10.231.9.1:4566", "AWS_ACCESS_KEY_ID": "sim", "STRATUS_BUNDLE_URI": "s3://b/k"}
    (tmp_path / "sim.json").write_text(json.dumps({"nodes": {}, "env": env}))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "already-set")
    monkeypatch.delenv("STRATUS_BUNDLE_URI", raising=False)
    local_transport(tmp_path)
    assert os.environ["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert os.environ["AWS_ACCESS_KEY_ID"] == "already-set"  # what the caller set is kept
    assert "STRATUS_BUNDLE_URI" not in os.environ  # only the AWS settings: the rest is the hosts'
