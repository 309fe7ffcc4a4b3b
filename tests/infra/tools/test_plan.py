"""scripts/plan.sh: offline resources, policy verdicts and cost, as a reviewer runs it."""

from __future__ import annotations

import os
import re
import subprocess
from decimal import Decimal

import yaml

from infra.tools import plan
from infra.tools.offline import ROOT, run_program
from runtime.contract import ExitCode
from tests.infra.support import EXAMPLE, with_unrotated_key

PLAN = ROOT / "scripts" / "plan.sh"


def _plan(*args: str) -> subprocess.CompletedProcess:
    # A clean environment: no AWS credentials, no Pulumi; DS_ACCELERATOR set only to skip the
    # torch import that scripts/_venv.sh uses to pick DeepSpeed's accelerator.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "DS_ACCELERATOR": "cpu"}
    return subprocess.run([str(PLAN), *args], capture_output=True, text=True, env=env, timeout=300, cwd="/")


def test_plan_of_the_example_prints_resources_verdicts_and_a_cost_that_adds_up():
    result = _plan(str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    resources, rest = out.split("== policy verdicts", 1)
    verdicts, cost = rest.split("== estimated cost (USD) ==", 1)
    assert "s3.Bucket" in resources and "aws:kms stack key + bucket key, public access blocked, TLS-only" in resources
    assert re.search(r"ec2\.LaunchTemplate\s+training-launch-template\s+g5\.12xlarge, IMDSv2, no public IP", resources)
    assert "19 passed, 0 failed" in verdicts and "FAIL" not in verdicts
    assert "PASS  aws-autoscaling-group-launch-template" in verdicts
    assert "PASS  aws-lb-listener-tls-to-targets" in verdicts and "PASS  aws-iam-role-own-ssm-parameters" in verdicts
    assert re.search(r"lb\.LoadBalancer\s+serving-lb-nlb\s+internal network, 2 zones", resources)
    assert re.search(r"lb\.Listener\s+serving-lb-grpc-listener\s+TCP 8001 \(TLS passed through\)", resources)
    assert re.search(r"serving-lb-https-tg\s+TCP 8000, health HTTPS :8000/v2/health/ready, drain 120 s", resources)
    assert re.search(r"autoscaling\.Group\s+serving-hosts\s+2-2 hosts over 2 subnets, ELB health", resources)
    assert "serving hosts: 2 x c7i.xlarge, behind an internal network load balancer (drain 120 s)" in out
    assert (
        "serving ports: HTTPS 8000, gRPC (Open Inference Protocol, TLS) 8001; TLS passed through to the hosts; "
        "reachable from 10.42.0.0/16 only"
    ) in out
    lines = cost.strip().splitlines()
    items = [line for line in lines[1:] if re.search(r"\d+\.\d{4}$", line) and not line.startswith("total")]
    total = next(line for line in lines if line.startswith("total"))
    assert len(items) == 8
    assert re.search(r"serving host c7i\.xlarge\s+2\s", cost) and "network load balancer (internal)" in cost
    assert sum(Decimal(line.split()[-1]) for line in items) == Decimal(total.split()[-1]) == Decimal("11.8429")
    assert "estimated run cost for 10 h: 118.43 USD" in cost


def test_plan_stops_with_the_breakdown_when_over_budget(tmp_path):
    config = yaml.safe_load(EXAMPLE.read_text())
    config["config"]["stratus:max-hourly-usd"] = 2
    stack_file = tmp_path / "Pulumi.tight.yaml"
    stack_file.write_text(yaml.safe_dump(config))
    result = _plan(str(stack_file))
    assert result.returncode == 2 == ExitCode.BAD_INPUT
    assert "config `stratus:max-hourly-usd`" in result.stderr and "total" in result.stderr


def test_plan_reports_a_violated_rule_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(plan, "run_program", with_unrotated_key(run_program))
    assert plan.main([str(EXAMPLE)]) == 1 == ExitCode.FAILED
    out = capsys.readouterr().out
    assert "FAIL  aws-kms-key-rotation-enabled" in out and "18 passed, 1 failed" in out


def test_plan_names_the_key_of_a_config_error(tmp_path, capsys):
    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text("config:\n  aws:region: us-east-1\n  stratus:trainer-count: 0\n")
    assert plan.main([str(stack_file)]) == 2 == ExitCode.BAD_INPUT
    assert "config `stratus:trainer-count`" in capsys.readouterr().err


def test_plan_of_four_p5_on_a_capacity_block_shows_reservation_quota_ami_and_block_price(capsys):
    assert plan.main([str(ROOT / "examples" / "Pulumi.p5-capacity-block.yaml")]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "market capacity-block, reservation: Capacity Block, reservation cr-0a1b2c3d4e5f60718" in out
    assert "placement group: none; scratch: local NVMe, 8 x 3840 GB striped (RAID0)" in out
    assert "Service Quotas ec2/L-417A185B 'Running On-Demand P instances' >= 768 vCPUs (4 x p5.48xlarge)" in out
    assert "training AMI: NOT PINNED" in out and "--update-ami" in out
    assert re.search(r"training node p5\.48xlarge \(capacity block\)\s+4\s+31\.464000\s+125\.8560", out)
    # the node group, its template's market and interfaces, the addresses, the block's end, the AMI's torch
    assert re.search(
        r"autoscaling\.Group\s+training-nodes\s+4 nodes \(min = max = desired\) in 1 subnet, EC2 health: a lost node "
        r"is replaced, no placement group",
        out,
    )
    assert re.search(
        r"ec2\.LaunchTemplate\s+training-launch-template\s+p5\.48xlarge, IMDSv2, no public IP, 200GB encrypted "
        r"\(stack key\), EFA x1 \+ efa-only x31 \(1 IP per instance\), Capacity Block cr-0a1b2c3d4e5f60718$",
        out,
        re.M,
    )
    assert "on-demand" not in out.split("training-launch-template", 1)[1].splitlines()[0]
    assert (
        "addresses: training subnet 10.42.0.0/19: 8187 usable addresses (its 8192 minus the 5 AWS reserves), 11 "
        "needed (5 for the training nodes (4 + 1 replacing, 1 IP interface each) + 3 for 3 interface endpoints"
    ) in out
    assert "Capacity Block ends 2026-12-10 11:30 UTC; EC2 starts terminating the nodes at 2026-12-10 11:00 UTC" in out
    assert "training AMI family: pytorch-2.13 (stratus:trainer-ami-framework), carries torch 2.13" in out
    assert (
        "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.13-amazon-linux-2023/latest/ami-id" in out
    )


def test_plan_of_p5_on_a_slash_24_counts_the_addresses_and_fails_when_they_run_out(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "examples" / "Pulumi.p5-capacity-block.yaml").read_text())
    config["config"]["stratus:vpc-cidr"] = "10.42.0.0/24"
    stack_file = tmp_path / "Pulumi.small.yaml"
    stack_file.write_text(yaml.safe_dump(config))
    # 4 nodes with efa-only interfaces take 5 addresses (one replacing): they fit the /27
    assert plan.main([str(stack_file)]) == ExitCode.OK
    assert "training subnet 10.42.0.0/27: 27 usable addresses (its 32 minus the 5 AWS reserves), 11 needed" in (
        capsys.readouterr().out
    )
    config["config"]["stratus:trainer-count"] = 20
    stack_file.write_text(yaml.safe_dump(config))
    assert plan.main([str(stack_file)]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "config `stratus:vpc-cidr`: 10.42.0.0/24 is too small" in err
    assert "28 needed (22 for the training nodes (20 + 2 replacing, 1 IP interface each)" in err
    assert "short by 1 address" in err and "use a /23 or larger range" in err
