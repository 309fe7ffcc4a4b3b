"""Run the Pulumi program offline under `pulumi.runtime.set_mocks` and record what it registers.

Used by `tests/infra`, `tests/policy` and `python -m infra.tools.plan`: no Pulumi CLI, no AWS
credentials.
The mocks answer like AWS would (camelCase outputs: ids, ARNs, bucket names, private IPs), and
the monitor records each registration with its parent and property dependencies, the same
information the Pulumi engine hands to a policy pack.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "__main__.py"
ACCOUNT_ID = "123456789012"
S3_PREFIX_LIST = "pl-63a5400a"
ORGANIZATION = "organization"
"""The organization of offline runs (the name Pulumi's self-managed backends use)."""


def _reveal(value: Any) -> Any:
    """Unwrap Pulumi's secret envelopes, as the engine does before handing props to policies."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _reveal(value["value"])
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _tag(text: str, n: int = 17) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


_DIRECTIONS = {
    "east": "e",
    "west": "w",
    "north": "n",
    "south": "s",
    "central": "c",
    "northeast": "ne",
    "northwest": "nw",
    "southeast": "se",
    "southwest": "sw",
}


def _az_id_prefix(region: str) -> str:
    """The AZ ID prefix AWS uses for `region` (us-east-2 -> use2, ap-northeast-1 -> apne1)."""
    area, *middle, number = region.split("-")
    return area + "".join(_DIRECTIONS.get(word, word[0]) for word in middle) + number


def _pem(label: str, name: str) -> str:
    return f"-----BEGIN {label}-----\nmock{_tag(name, 40)}\n-----END {label}-----\n"


def _tls_outputs(typ: str, name: str) -> dict[str, str]:
    """PEM-shaped values the TLS provider computes (not real keys or certificates)."""
    if typ == "tls:index/privateKey:PrivateKey":
        return {
            "privateKeyPem": _pem("EC PRIVATE KEY", name),
            "privateKeyPemPkcs8": _pem("PRIVATE KEY", name),
            "publicKeyPem": _pem("PUBLIC KEY", name),
        }
    if typ == "tls:index/certRequest:CertRequest":
        return {"certRequestPem": _pem("CERTIFICATE REQUEST", name)}
    return {"certPem": _pem("CERTIFICATE", name)}


class StratusMocks(pulumi.runtime.Mocks):
    """AWS-like answers for resources and invokes.

    What only AWS knows is not invented here: zone offerings default to every zone (the offline
    plan lists that check as one only a real preview makes), quotas to `UNLIMITED`, and the
    newest AMI (by name or by a Deep Learning AMI family's SSM public parameter) to one derived
    from `ami_generation`.

    Args:
        region: region whose zones `getAvailabilityZones` returns.
        offerings: instance type -> zones offering it; default: every zone.
        quotas: Service Quotas code -> value; default: `UNLIMITED`.
        ami_generation: changes the id of the "newest" AMI a lookup by name returns (a new
            image published by AWS).
        autoscaling_role: whether the account already has EC2 Auto Scaling's service-linked role.
    """

    UNLIMITED = 1e9

    def __init__(
        self,
        region: str = "us-east-1",
        offerings: Mapping[str, list[str]] | None = None,
        quotas: Mapping[str, float] | None = None,
        ami_generation: int = 0,
        autoscaling_role: bool = True,
    ):
        self.region = region
        self.autoscaling_role = autoscaling_role
        self.zones = [f"{region}{z}" for z in "abcd"]
        self.offerings = dict(offerings or {})
        self.quotas = dict(quotas or {})
        self.ami_generation = ami_generation
        self._next_ip = 10
        self.invokes: list[tuple[str, dict]] = []

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict]:
        """Return an id and the resource's state: its inputs plus AWS-computed outputs."""
        inputs, typ, name = dict(args.inputs), args.typ, args.name
        service = typ.split(":")[1].split("/")[0]
        rid, out = f"{name}-{_tag(name, 8)}", {}
        arn_base = f"arn:aws:{service}:{self.region}:{ACCOUNT_ID}"
        if typ == "aws:s3/bucket:Bucket":
            rid = inputs.get("bucket") or inputs.get("bucketPrefix", name) + _tag(name, 8)
            out = {"bucket": rid, "arn": f"arn:aws:s3:::{rid}"}
        elif typ == "aws:kms/key:Key":
            rid = f"{_tag(name, 8)}-0000-4000-8000-{_tag(name + 'k', 12)}"
            out = {"keyId": rid, "arn": f"{arn_base}:key/{rid}"}
        elif typ.startswith("aws:iam/"):
            rid = inputs.get("name") or f"{name}-{_tag(name, 7)}"
            kind = "instance-profile" if typ.endswith("InstanceProfile") else "role"
            out = {"name": rid, "arn": f"arn:aws:iam::{ACCOUNT_ID}:{kind}/{rid}"}
        elif typ == "aws:ssm/parameter:Parameter":
            rid = inputs["name"]
            out = {"arn": f"{arn_base}:parameter{rid}"}
        elif typ == "aws:ec2/instance:Instance":
            rid = f"i-{_tag(name)}"
            out = {"privateIp": f"10.42.0.{self._next_ip}", "arn": f"{arn_base}:instance/{rid}"}
            self._next_ip += 1
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            rid = f"lt-{_tag(name)}"
            out = {"latestVersion": 1, "arn": f"{arn_base}:launch-template/{rid}"}
        elif typ == "aws:ec2/placementGroup:PlacementGroup":
            rid = f"{name}-{_tag(name, 7)}"
            out = {"name": rid}
        elif typ == "aws:ec2/vpcEndpoint:VpcEndpoint":
            rid = f"vpce-{_tag(name)}"
            if inputs.get("vpcEndpointType") == "Gateway":
                out = {"prefixListId": S3_PREFIX_LIST}
        elif typ == "aws:ec2/eip:Eip":
            out = {"allocationId": f"eipalloc-{_tag(name)}", "publicIp": "203.0.113.10"}
        elif typ == "random:index/randomPassword:RandomPassword":
            rid, out = "none", {"result": f"mock-secret-{_tag(name, 32)}"}
        elif typ.startswith("tls:"):
            rid, out = _tag(name, 20), _tls_outputs(typ, name)
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            rid = f"{arn_base}:loadbalancer/net/{name}/{_tag(name, 16)}"
            out = {"arn": rid, "dnsName": f"{name}-{_tag(name, 16)}.elb.{self.region}.amazonaws.com"}
        elif typ == "aws:lb/targetGroup:TargetGroup":
            rid = f"{arn_base}:targetgroup/{name}/{_tag(name, 16)}"
            out = {"arn": rid}
        elif typ == "aws:autoscaling/group:Group":
            rid = f"{name}-{_tag(name, 8)}"
            out = {"name": rid, "arn": f"{arn_base}:autoScalingGroup:{_tag(name, 8)}:autoScalingGroupName/{rid}"}
        elif typ.startswith("aws:ec2/"):
            prefix = {"vpc": "vpc", "subnet": "subnet", "securityGroup": "sg"}.get(typ.split("/")[1].split(":")[0], "r")
            rid = f"{prefix}-{_tag(name)}"
        out.setdefault("arn", f"{arn_base}:{_tag(typ, 6)}/{rid}")
        return rid, {**inputs, **out}

    def call(self, args: MockCallArgs) -> dict:
        """Answer the invokes the program makes; any other invoke is a test failure."""
        invoke, a = args.token, args.args
        self.invokes.append((invoke, dict(a)))
        if invoke == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/ci",
                "userId": "AIDAMOCK",
                "id": ACCOUNT_ID,
            }
        if invoke == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if invoke == "aws:index/getAvailabilityZones:getAvailabilityZones":
            ids = [f"{_az_id_prefix(self.region)}-az{i}" for i in range(1, len(self.zones) + 1)]
            return {"names": self.zones, "zoneIds": ids, "id": self.region}
        if invoke == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            instance_type = a["filters"][0]["values"][0]
            zones = self.offerings.get(instance_type, self.zones)
            return {
                "locations": zones,
                "instanceTypes": [instance_type] * len(zones),
                "locationTypes": ["availability-zone"] * len(zones),
                "id": self.region,
            }
        if invoke == "aws:ec2/getAmi:getAmi":
            names = [f["values"][0] for f in a.get("filters", []) if f["name"] in ("name", "image-id")]
            pinned = names and names[0].startswith("ami-")
            ami = names[0] if pinned else f"ami-{_tag(str(names) + str(self.ami_generation))}"
            return {
                "id": ami,
                "imageId": ami,
                "rootDeviceName": "/dev/xvda",
                "architecture": "x86_64",
                "name": names[0] if names else "mock",
            }
        if invoke == "aws:iam/getRoles:getRoles":
            # EC2 Auto Scaling's service-linked role: present unless `autoscaling_role` is False.
            arns = [f"arn:aws:iam::{ACCOUNT_ID}:role/aws-service-role/x"] if self.autoscaling_role else []
            return {"arns": arns, "names": ["AWSServiceRoleForAutoScaling"] if arns else [], "id": "roles"}
        if invoke == "aws:ssm/getParameter:getParameter":
            # The Deep Learning AMI families' public parameters: a family's newest image.
            name = a["name"]
            if not name.startswith("/aws/service/"):
                raise NotImplementedError(f"the offline mocks know only public parameters, not {name}")
            ami = f"ami-{_tag(name + str(self.ami_generation))}"
            return {
                "id": name,
                "name": name,
                "type": "String",
                "value": ami,
                "insecureValue": ami,
                "version": 1,
                "arn": f"arn:aws:ssm:{self.region}::parameter{name}",
                "withDecryption": False,
            }
        if invoke == "aws:servicequotas/getServiceQuota:getServiceQuota":
            value = self.quotas.get(a["quotaCode"], self.UNLIMITED)
            return {
                "value": value,
                "quotaCode": a["quotaCode"],
                "serviceCode": a["serviceCode"],
                "quotaName": a["quotaCode"],
                "adjustable": True,
                "globalQuota": False,
                "id": a["quotaCode"],
            }
        raise NotImplementedError(f"the offline mocks do not answer the invoke {invoke}")


@dataclass
class Registered:
    """One resource as the program registered it."""

    urn: str
    type: str
    name: str
    id: str
    inputs: dict
    state: dict
    parent: str
    custom: bool
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    ignore_changes: list[str] = field(default_factory=list)
    dependencies: list[str] = field(default_factory=list)
    """URNs the resource depends on (`depends_on` and its inputs' resources)."""


class RecordingMonitor(MockMonitor):
    """A mock monitor that also keeps parents and property dependencies of registrations."""

    def __init__(self, mocks: StratusMocks):
        super().__init__(mocks)
        self.recorded: list[Registered] = []

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        """Register through the mocks, then record the request's dependency information."""
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            registration = self.resources[response.urn]
            deps = {k: list(v.urns) for k, v in request.propertyDependencies.items()}
            inputs = _reveal(rpc.deserialize_properties(request.object))
            self.recorded.append(
                Registered(
                    response.urn,
                    request.type,
                    request.name,
                    registration.id,
                    inputs,
                    _reveal(dict(registration.state)),
                    request.parent,
                    bool(request.custom),
                    deps,
                    list(request.ignoreChanges),
                    list(request.dependencies),
                )
            )
        return response


@dataclass
class ProgramRun:
    """What one offline run registered and exported."""

    resources: list[Registered]
    outputs: dict[str, Any]

    def of_type(self, typ: str) -> list[Registered]:
        """Every resource of the type token `typ`, in registration order."""
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registered:
        """The resource with logical name `name` (exactly one must exist)."""
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def attached(self, typ: str, target: Registered, prop: str = "bucket") -> list[Registered]:
        """Resources of `typ` whose `prop` input was computed from `target` (v7 bucket joins)."""
        return [r for r in self.of_type(typ) if target.urn in r.property_dependencies.get(prop, [])]


def load_stack_config(path: str | Path) -> dict[str, Any]:
    """The `config:` mapping of a stack file such as `Pulumi.example.yaml`.

    Raises:
        ValueError: the file has no `config:` mapping or holds encrypted (`secure:`) values,
            which only the Pulumi CLI can decrypt.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    config = data.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no `config:` mapping; see Pulumi.example.yaml")
    secure = [k for k, v in config.items() if isinstance(v, dict) and "secure" in v]
    if secure:
        raise ValueError(f"{path}: encrypted values {secure} need the Pulumi CLI; stratus config has no secrets")
    return config


def config_strings(config: Mapping[str, Any], namespace: str = "stratus") -> dict[str, str]:
    """Turn a stack-file `config:` mapping into Pulumi's string config (lists as JSON)."""
    out = {}
    for key, value in config.items():
        full = key if ":" in key else f"{namespace}:{key}"
        if isinstance(value, bool):
            out[full] = "true" if value else "false"
        elif isinstance(value, list | dict):
            out[full] = json.dumps(value)
        else:
            out[full] = str(value)
    return out


def _ensure_event_loop() -> None:
    """Pulumi's runtime works on the thread's current event loop. After an `asyncio.run()` in the
    same process (which leaves none) or with a closed one, set a new one instead of failing with
    "There is no current event loop"."""
    try:
        if not asyncio.get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


def run(
    body: Callable[[], Any],
    config: Mapping[str, Any] | None = None,
    *,
    mocks: StratusMocks | None = None,
    stack: str = "dev",
) -> ProgramRun:
    """Run `body` as a Pulumi program under mocks; its returned dict becomes `outputs`.

    Exceptions raised by the program (config errors, the budget guard) propagate unchanged.
    """
    config = dict(config or {})
    _ensure_event_loop()
    mocks = mocks or StratusMocks(region=str(config.get("aws:region", "us-east-1")))
    monitor = RecordingMonitor(mocks)
    settings.ROOT.set(None)  # each run gets a fresh root stack resource
    pulumi.runtime.set_mocks(
        mocks, project="stratus", stack=stack, preview=False, monitor=monitor, organization=ORGANIZATION
    )
    pulumi.runtime.set_all_config(config_strings(config))
    returned: dict[str, Any] = {}
    _sync_await(run_pulumi_func(lambda: returned.update(body() or {})))
    exported = {**settings.get_root_resource().outputs, **returned}
    outputs = {k: _sync_await(pulumi.Output.from_input(v).future()) for k, v in exported.items()}
    return ProgramRun(monitor.recorded, outputs)


def run_program(config: Mapping[str, Any], **kwargs: Any) -> ProgramRun:
    """Run the whole stack program (`__main__.py`) with `config` (keys as in a stack file)."""

    def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")

    return run(program, config, **kwargs)
