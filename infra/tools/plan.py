"""Offline plan of a stack: what `pulumi up` would create, the policy verdicts, and the cost.

    ./scripts/plan.sh Pulumi.example.yaml          # or: python -m infra.tools.plan Pulumi.dev.yaml

Runs the real program under Pulumi mocks (no Pulumi CLI, no AWS credentials; zone offerings
are taken from the catalog instead of EC2) and prints three parts: a table of the resources
(type, name, key security settings), the verdict of every rule of the policy pack, and the
hourly cost breakdown. Exit status (`runtime.contract.ExitCode`): 0 (OK) all rules pass, 1
(FAILED) a rule is violated, 2 (BAD_INPUT) the config is invalid or over budget (the message names
the key; a budget overrun shows the breakdown). `stratus plan` calls `main(argv)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infra.config.capacity import block_summary
from infra.config.catalog import CATALOG
from infra.config.cost import estimate_cost
from infra.config.errors import ConfigError
from infra.config.quota import quota_needs
from infra.config.stack import StackConfig, parse_config
from infra.tools.offline import ProgramRun, Registered, load_stack_config, run_program
from infra.tools.policycheck import evaluate
from runtime.contract import ExitCode


def _short(typ: str) -> str:
    package, rest = typ.split(":", 1)
    module, cls = rest.split(":")
    module = module.split("/")[0]
    return f"{package if module == 'index' else module}.{cls}"


def _n(value) -> str:
    """Numbers come back from the engine as floats; print whole ones without `.0`."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _rule(i: dict) -> str:
    proto = "all" if str(i.get("ipProtocol")) == "-1" else f"{i.get('ipProtocol')} {_n(i.get('fromPort'))}"
    peer = i.get("referencedSecurityGroupId")
    group = "its own group" if peer in (None, i.get("securityGroupId")) else f"the group {peer}"
    source = i.get("cidrIpv4") or i.get("prefixListId") or group
    return f"{proto} {'from' if 'Ingress' in i.get('_kind', '') else 'to'} {source}"


def _volumes(devices: list, keys: set[str]) -> str:
    parts = []
    for d in devices:
        ebs = d.get("ebs", d)
        encrypted = str(ebs.get("encrypted")).lower() == "true"
        key = "stack key" if ebs.get("kmsKeyId") in keys else "other key"
        parts.append(f"{_n(ebs.get('volumeSize'))}GB {'encrypted (' + key + ')' if encrypted else 'UNENCRYPTED'}")
    return ", ".join(parts)


def _imds(props: dict) -> str:
    meta = props.get("metadataOptions") or {}
    return "IMDSv2" if meta.get("httpTokens") == "required" else "IMDSv1 ALLOWED"


def summarize(r: Registered, run: ProgramRun, keys: set[str]) -> str:
    """The security-relevant settings of one resource, in a few words."""
    i, short = r.inputs, r.type.rsplit(":", 1)[-1]
    attached = {
        x.type.rsplit(":", 1)[-1]: x for x in run.resources if r.urn in x.property_dependencies.get("bucket", [])
    }
    if short == "Bucket":
        sse = (attached.get("BucketServerSideEncryptionConfiguration") or r).inputs.get("rules", [{}])[0]
        default = sse.get("applyServerSideEncryptionByDefault", {})
        enc = f"{default.get('sseAlgorithm', 'NO SSE')}" + (
            " stack key" if default.get("kmsMasterKeyId") in keys else ""
        )
        logging = attached.get("BucketLogging")
        return ", ".join(
            [
                f"{enc}{' + bucket key' if sse.get('bucketKeyEnabled') else ''}",
                "public access blocked" if "BucketPublicAccessBlock" in attached else "PUBLIC ACCESS NOT BLOCKED",
                "TLS-only policy" if "BucketPolicy" in attached else "NO POLICY",
                "versioned" if "BucketVersioning" in attached else "unversioned",
                f"logs to {logging.inputs['targetPrefix']}" if logging else "no access log (log bucket)",
            ]
        )
    if short == "Key":
        rotation = "on" if i.get("enableKeyRotation") else "OFF"
        return f"rotation {rotation}, deletion window {_n(i.get('deletionWindowInDays'))} d"
    if short == "LaunchTemplate":
        return _template_summary(i, keys)
    if short == "Instance":
        root = i.get("rootBlockDevice")
        volumes = _volumes([root], keys) if root else "volumes from launch template"
        public = "PUBLIC IP" if i.get("associatePublicIpAddress") else "no public IP"
        monitoring = "detailed monitoring" if i.get("monitoring") else "BASIC MONITORING"
        ignored = "ignores template changes" if "launchTemplate" in r.ignore_changes else ""
        return ", ".join(filter(None, [i.get("instanceType"), _imds(i), public, volumes, monitoring, ignored]))
    if short in ("SecurityGroupIngressRule", "SecurityGroupEgressRule"):
        return _rule({**i, "_kind": short})
    if short == "Subnet":
        public = "ON" if i.get("mapPublicIpOnLaunch") else "off"
        return (
            f"{i.get('tags', {}).get('tier')} {i.get('cidrBlock')} in {i.get('availabilityZone')}, public IPs {public}"
        )
    if short == "VpcEndpoint":
        return f"{i.get('vpcEndpointType')} {i.get('serviceName')}"
    if short == "FlowLog":
        return f"{i.get('trafficType')} traffic -> {i.get('logDestinationType')}"
    if short == "DefaultSecurityGroup":
        return "no rules" if not (i.get("ingress") or i.get("egress")) else "HAS RULES"
    if short == "Role":
        principal = json.loads(i["assumeRolePolicy"])["Statement"][0]["Principal"]
        return f"trusted by {principal}"
    if short == "RolePolicy":
        statements = json.loads(i["policy"])["Statement"]
        return ", ".join(f"{s['Effect']} {s['Sid']}" for s in statements)
    if short == "Parameter":
        return f"{i.get('type')} {i.get('name')}" + (" (stack key)" if i.get("keyId") in keys else "")
    if short == "SecurityGroup":
        return i.get("description", "")
    if short == "RolePolicyAttachment":
        return i.get("policyArn", "").rsplit("/", 1)[-1]
    return _serving_summary(short, i)


def _market(i: dict) -> str:
    """The launch template's market: what `instanceMarketOptions` asks EC2 for."""
    options = i.get("instanceMarketOptions") or {}
    market = options.get("marketType")
    if market == "spot":
        return f"spot <= {options.get('spotOptions', {}).get('maxPrice')} USD/h"
    if market == "capacity-block":
        target = (i.get("capacityReservationSpecification") or {}).get("capacityReservationTarget") or {}
        return f"Capacity Block {target.get('capacityReservationId', '(no reservation)')}"
    target = (i.get("capacityReservationSpecification") or {}).get("capacityReservationTarget")
    return "on-demand" + (f" in reservation {next(iter(target.values()))}" if target else "")


def _interfaces(nis: list) -> str:
    """EFA interfaces by kind and the addresses one instance takes."""
    kinds = [n.get("interfaceType") for n in nis]
    efa, efa_only = kinds.count("efa"), kinds.count("efa-only")
    if not efa and not efa_only:
        return ""
    with_ip = len(nis) - efa_only
    return f"EFA x{efa}" + (f" + efa-only x{efa_only}" if efa_only else "") + f" ({with_ip} IP per instance)"


def _template_summary(i: dict, keys: set[str]) -> str:
    nis = i.get("networkInterfaces", [])
    public = any(n.get("associatePublicIpAddress") != "false" for n in nis)
    return ", ".join(
        filter(
            None,
            [
                i.get("instanceType"),
                _imds(i),
                "PUBLIC IP" if public else "no public IP",
                _volumes(i.get("blockDeviceMappings", []), keys),
                _interfaces(nis),
                _market(i),
            ],
        )
    )


def _group_summary(i: dict) -> str:
    if i.get("targetGroupArns") is not None or i.get("healthCheckType") == "ELB":
        prefs = (i.get("instanceRefresh") or {}).get("preferences") or {}
        return (
            f"{_n(i.get('minSize'))}-{_n(i.get('maxSize'))} hosts over {len(i.get('vpcZoneIdentifiers', []))} "
            f"subnets, {i.get('healthCheckType')} health, rolling refresh keeping "
            f"{_n(prefs.get('minHealthyPercentage'))}%"
        )
    parts = [
        f"{_n(i.get('desiredCapacity'))} nodes (min = max = desired) in {len(i.get('vpcZoneIdentifiers', []))} subnet",
        f"{i.get('healthCheckType')} health: a lost node is replaced",
        f"placement group {i['placementGroup']}" if i.get("placementGroup") else "no placement group",
    ]
    if i.get("capacityRebalance"):
        parts.append("capacity rebalancing")
    parts.append("refresh on template change" if i.get("instanceRefresh") else "running nodes keep their template")
    return ", ".join(parts)


def _serving_summary(short: str, i: dict) -> str:
    """The load balancer, the host group and the certificates, in a few words."""
    if short == "LoadBalancer":
        scheme = "internal" if i.get("internal") else "INTERNET-FACING"
        return f"{scheme} {i.get('loadBalancerType')}, {len(i.get('subnets', []))} zones, cross-zone"
    if short == "Listener":
        return f"{i.get('protocol')} {_n(i.get('port'))}" + (
            " (TLS passed through)" if i.get("protocol") == "TCP" else ""
        )
    if short == "TargetGroup":
        h = i.get("healthCheck") or {}
        return (
            f"{i.get('protocol')} {_n(i.get('port'))}, health {h.get('protocol')} :{h.get('port')}{h.get('path', '')}, "
            f"drain {_n(i.get('deregistrationDelay'))} s"
        )
    if short == "Group":
        return _group_summary(i)
    if short == "Policy":
        tracking = i.get("targetTrackingConfiguration") or {}
        return f"target tracking: average CPU {_n(tracking.get('targetValue'))}%"
    if short == "PrivateKey":
        return f"{i.get('algorithm')} {i.get('ecdsaCurve', '')} (in Pulumi state only)".replace("  ", " ")
    if short in ("SelfSignedCert", "LocallySignedCert"):
        kind = "CA" if i.get("isCaCertificate") else "server"
        hours, early = _n(i.get("validityPeriodHours")), _n(i.get("earlyRenewalHours"))
        return f"{kind}, valid {hours} h, re-issued by `pulumi up` in its last {early} h"
    return ""


def resource_table(run: ProgramRun) -> str:
    """One line per custom resource: type, logical name, key security settings."""
    keys = {k.state["arn"] for k in run.of_type("aws:kms/key:Key")}
    # Registration order depends on output resolution; sort by component, then type and name.
    custom = sorted((r for r in run.resources if r.custom), key=lambda r: (r.parent, r.type, r.name))
    rows = [(_short(r.type), r.name, summarize(r, run, keys)) for r in custom]
    width_type = max(len(t) for t, _, _ in rows)
    width_name = max(len(n) for _, n, _ in rows)
    lines = [f"{'type':<{width_type}}  {'name':<{width_name}}  security settings"]
    lines += [f"{t:<{width_type}}  {n:<{width_name}}  {s}".rstrip() for t, n, s in rows]
    return "\n".join(lines) + f"\n{len(rows)} resources"


def _ami(run: ProgramRun, label: str, key: str, pinned: str | None, image: str | None) -> str:
    if pinned:
        return f"{label} AMI: {pinned} (pinned in stratus:{key})"
    return (
        f"{label} AMI: NOT PINNED; looked up as the newest image at each preview (offline: {image}); "
        "pin it with ./scripts/plan.sh --update-ami <stack file>"
    )


def ami_family_line(cfg: StackConfig) -> str:
    """The training nodes' Deep Learning AMI family, its SSM parameter and the torch it carries."""
    family = cfg.ami_family
    torch = f"carries torch {family.torch}" if family.torch else "carries no torch (the runtime bundle installs it)"
    source = "the pinned id was taken from" if cfg.trainer_ami else "the image comes from"
    return (
        f"training AMI family: {family.name} (stratus:trainer-ami-framework), {torch} (infra/config/catalog.py); "
        f"{source} {family.ssm_parameter}"
    )


def addresses_line(cfg: StackConfig) -> str:
    """The training subnet's addresses and what takes them."""
    budget = cfg.address_budget
    return f"addresses: {budget.describe()}" if budget else "addresses: not computed (invalid network config)"


def serving_ports_line(cfg: StackConfig) -> str:
    """How many serving hosts run, which ports the load balancer passes to them, and who may reach them."""
    grpc = (
        f"gRPC (Open Inference Protocol, TLS) {cfg.serving_grpc_port}"
        if cfg.serving_grpc_port
        else "gRPC off (stratus:serving-grpc-port 0)"
    )
    sources = ", ".join(cfg.serving_allowed_cidrs)
    hosts = f"serving hosts: {cfg.num_serving} x {cfg.serving_instance_type}"
    if cfg.serving_scale_cpu_percent is not None:
        hosts += f", scaling to {cfg.serving_ceiling} at {_n(cfg.serving_scale_cpu_percent)}% average CPU"
    return (
        f"{hosts}, behind an internal network load balancer (drain {cfg.serving_drain_seconds} s)\n"
        f"serving ports: HTTPS {cfg.serving_port}, {grpc}; TLS passed through to the hosts; "
        f"reachable from {sources} only"
    )


def capacity_section(cfg: StackConfig, run: ProgramRun) -> str:
    """Capacity, images, scratch, and the checks only a real `pulumi preview` can make."""
    trainer = CATALOG[cfg.trainer_instance_type]
    target = cfg.reservation_target
    if cfg.trainer_market == "capacity-block":
        reservation = f"Capacity Block, reservation {cfg.trainer_capacity_reservation_id}"
    elif target:
        reservation = "targeted Capacity Reservation " + next(iter(target.values()))
    else:
        reservation = f"no target (preference: {cfg.trainer_capacity_reservation_preference or 'open'})"
    mode, gb = cfg.scratch
    scratch = {
        "nvme": f"local NVMe, {trainer.nvme_disks} x {trainer.nvme_disk_gb} GB"
        + (" striped (RAID0)" if trainer.nvme_disks > 1 else ""),
        "ebs": f"gp3 {gb} GB, {cfg.trainer_scratch_iops} IOPS, {cfg.trainer_scratch_throughput_mibps} MiB/s",
        "none": "none",
    }[mode]
    lt = run.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    server_lt = [t for t in lt if t.name == "serving-launch-template"]
    server_ami = server_lt[0].inputs.get("imageId") if server_lt else None
    lt = [t for t in lt if t.name != "serving-launch-template"]
    lines = [
        f"training nodes: {cfg.num_trainers} x {trainer.name}, market {cfg.trainer_market}, reservation: {reservation}",
        f"placement group: {'cluster' if cfg.use_placement_group else 'none'}; scratch: {scratch}",
        f"node group: {cfg.num_trainers} nodes kept by an Auto Scaling group (a lost node is replaced: new id and "
        "IP; the launcher lists the group's members); running nodes "
        + ("are replaced (instance refresh) when" if cfg.trainer_follow_launch_template else "ignore")
        + " launch-template changes (stratus:trainer-follow-launch-template)",
        _ami(run, "training", "trainer-ami", cfg.trainer_ami, lt[0].inputs.get("imageId") if lt else None),
        ami_family_line(cfg),
        _ami(run, "serving", "serving-ami", cfg.serving_ami, server_ami),
        addresses_line(cfg),
        *block_summary(cfg),
        serving_ports_line(cfg),
        "checks only a real `pulumi preview` makes (offline they are assumed to pass):",
    ]
    if cfg.quota_check:
        lines += [f"  Service Quotas {need.describe()}" for need in quota_needs(cfg)]
    else:
        lines.append("  (quota check off: stratus:quota-check false)")
    if cfg.zone_offerings_lookup:
        types = sorted({cfg.trainer_instance_type, cfg.serving_instance_type})
        lines.append(f"  EC2 zone offerings of {', '.join(types)} in {cfg.region}")
    if target:
        lines.append("  the reservation's type, zone and free capacity: checked by EC2 when the nodes launch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Plan the stack file given on the command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config", nargs="?", default="Pulumi.example.yaml", help="stack config file (Pulumi.<stack>.yaml)"
    )
    args = parser.parse_args(argv)
    path = Path(args.config)
    stack = path.name.removeprefix("Pulumi.").removesuffix(".yaml") or "dev"
    try:
        config = load_stack_config(path)
        run = run_program(config, stack=stack)
    except (ConfigError, ValueError, OSError) as e:
        print(f"plan failed for {path}:\n{e}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    raw = {k.split(":", 1)[1] if k.startswith("stratus:") else k: v for k, v in config.items()}
    cfg = parse_config(raw)
    estimate = estimate_cost(cfg)
    verdicts = evaluate(run)
    print(f"== resources: stack '{stack}' from {path} (offline, Pulumi mocks) ==")
    print(resource_table(run))
    print("\n== policy verdicts (policy/, all mandatory) ==")
    for name, violations in verdicts.items():
        print(f"{'PASS' if not violations else 'FAIL'}  {name}")
        for v in violations:
            print(f"      {v.message}")
    failed = sum(1 for v in verdicts.values() if v)
    print(f"{len(verdicts) - failed} passed, {failed} failed")
    print("\n== capacity, images, checks at preview ==")
    print(capacity_section(cfg, run))
    print("\n== estimated cost (USD) ==")
    print(estimate.table())
    return ExitCode.FAILED if failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
