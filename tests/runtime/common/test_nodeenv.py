"""The node environment: `/etc/stratus/node.env` and the process environment parsed into `NodeEnv`."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from runtime.common.nodeenv import LAUNCH_FIELDS, NodeEnv, env_name, read_env_file
from runtime.contract import checkpoints_uri


def test_defaults_without_a_file_or_variables(tmp_path):
    env = NodeEnv.load({}, tmp_path / "absent.env")
    assert env == NodeEnv()
    assert (env.dist_timeout_s, env.upload_budget_s, env.upload_wait_s, env.min_bus_gbps) == (300, 2, 600, 0)
    assert env.imds_endpoint == "http://169.254.169.254" and env.checkpoint_uri == ""


def test_the_file_is_read_and_the_process_environment_wins(tmp_path):
    path = tmp_path / "node.env"
    path.write_text(
        "# written by the user data\n"
        "NCCL_SOCKET_IFNAME='^lo,docker'\n"
        "STRATUS_MIN_BUS_GBPS=12.5\n"
        "STRATUS_IMDS_ENDPOINT='http://127.0.0.1:9/node0'\n"
        "STRATUS_DIST_TIMEOUT_S=60\n"
    )
    assert read_env_file(path)["NCCL_SOCKET_IFNAME"] == "^lo,docker"
    env = NodeEnv.load({"STRATUS_DIST_TIMEOUT_S": "30", "STRATUS_NODE_RANK": "1"}, path)
    assert (env.min_bus_gbps, env.imds_endpoint) == (12.5, "http://127.0.0.1:9/node0")
    assert (env.dist_timeout_s, env.node_rank) == (30, 1)


def test_a_bad_value_names_the_variable_and_where_it_came_from(tmp_path):
    with pytest.raises(ValueError, match=r"STRATUS_NUM_NODES='two' in .*node.env or the process environment"):
        NodeEnv.load({"STRATUS_NUM_NODES": "two"}, tmp_path / "node.env")
    (tmp_path / "node.env").write_text("A=1\nSTRATUS_IMDS_ENDPOINT='http://x\n")
    with pytest.raises(ValueError, match=r"node.env:2: STRATUS_IMDS_ENDPOINT=...: No closing quotation"):
        NodeEnv.load({}, tmp_path / "node.env")


def test_every_knob_has_a_stratus_variable_and_a_docstring_in_the_operations_guide():
    from tests.layout import ROOT

    guide = (ROOT / "docs" / "operations.md").read_text()
    for f in dataclasses.fields(NodeEnv):
        assert env_name(f.name).startswith("STRATUS_") and f"`{env_name(f.name)}`" in guide


def test_the_launch_exports_parse_back_into_the_same_knobs():
    env = NodeEnv(
        checkpoint_uri=checkpoints_uri("b", "r"), kms_key_arn="arn:k", node_rank=1, num_nodes=2, launch_id="L"
    )
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.exports(LAUNCH_FIELDS).items())
    assert NodeEnv.from_mapping(dict(w.split("=", 1) for w in shlex.split(line))) == env
    assert env.checkpoint_uri == "s3://b/r/"
