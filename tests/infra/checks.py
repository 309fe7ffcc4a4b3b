"""Security checks over an offline `ProgramRun`; each returns violations naming the URN.

Every check is used twice by the tests: on the real program (no violations) and on a copy
with one field deliberately broken (the violation appears), so each check is known to bite.
pulumi-aws v7 keeps bucket settings in separate resources; they are joined to their bucket
through the property dependencies the engine records for their `bucket` input.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import ipaddress
import json
import re

from infra.tools.offline import ProgramRun, Registered
from tests.infra.group_checks import hosts_behind_the_load_balancer, training_nodes_self_heal
from tests.infra.iam_sim import is_allowed

BUCKET = "aws:s3/bucket:Bucket"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
KEY = "aws:kms/key:Key"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
DEFAULT_SG = "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"
VPC = "aws:ec2/vpc:Vpc"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
SUBNET = "aws:ec2/subnet:Subnet"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PARAMETER = "aws:ssm/parameter:Parameter"
PASSWORD = "random:index/randomPassword:RandomPassword"
TLS_KEY = "tls:index/privateKey:PrivateKey"
NLB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
ASG = "aws:autoscaling/group:Group"
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
SECRET_PATTERNS = [re.compile(p) for p in (r"AKIA[0-9A-Z]{16}", r"PRIVATE KEY", r"(?i)secret_access_key")]


def key_arns(run: ProgramRun) -> set[str]:
    """ARNs of the stack's KMS keys."""
    return {k.state["arn"] for k in run.of_type(KEY)}


def _one(run: ProgramRun, typ: str, bucket: Registered, violations: list[str]) -> Registered | None:
    found = run.attached(typ, bucket)
    if len(found) != 1:
        violations.append(f"{bucket.urn}: has {len(found)} {typ.rsplit(':', 1)[-1]}, want 1")
        return None
    return found[0]


def bucket_encryption(run: ProgramRun) -> list[str]:
    """Every bucket: SSE-KMS by the stack key with the bucket key on."""
    keys, violations = key_arns(run), []
    for bucket in run.of_type(BUCKET):
        sse = _one(run, SSE, bucket, violations)
        rules = sse.inputs.get("rules") or [] if sse else []
        for rule in rules:
            default = rule.get("applyServerSideEncryptionByDefault") or {}
            if default.get("sseAlgorithm") != "aws:kms" or default.get("kmsMasterKeyId") not in keys:
                violations.append(f"{bucket.urn}: not SSE-KMS with the stack key: {default}")
            if rule.get("bucketKeyEnabled") is not True:
                violations.append(f"{bucket.urn}: bucket key is off")
        if sse and not rules:
            violations.append(f"{bucket.urn}: encryption configuration has no rule")
    return violations


def public_access_block(run: ProgramRun) -> list[str]:
    """Every bucket: a public access block with all four flags on."""
    violations = []
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket in run.of_type(BUCKET):
        block = _one(run, PAB, bucket, violations)
        if block and not all(block.inputs.get(f) is True for f in flags):
            violations.append(f"{bucket.urn}: public access block flags {block.inputs}")
    return violations


def tls_only_and_key_only_policy(run: ProgramRun) -> list[str]:
    """Every bucket policy denies plain HTTP and uploads asking for another encryption/key."""
    keys, violations = key_arns(run), []
    allow_all = {"Effect": "Allow", "Action": "*", "Resource": "*"}
    for bucket in run.of_type(BUCKET):
        policy = _one(run, BUCKET_POLICY, bucket, violations)
        if policy is None:
            continue
        statements = json.loads(policy.inputs["policy"])["Statement"] + [allow_all]
        arn, obj = bucket.state["arn"], bucket.state["arn"] + "/x"
        tls = {"aws:SecureTransport": "true"}
        key = next(iter(keys))
        sse, sse_key = "s3:x-amz-server-side-encryption", "s3:x-amz-server-side-encryption-aws-kms-key-id"
        cases = {
            "GetObject over plain HTTP": ("s3:GetObject", obj, {"aws:SecureTransport": "false"}),
            "ListBucket over plain HTTP": ("s3:ListBucket", arn, {"aws:SecureTransport": "false"}),
            "PutObject with SSE-S3": ("s3:PutObject", obj, {**tls, sse: "AES256"}),
            "PutObject with another key": ("s3:PutObject", obj, {**tls, sse: "aws:kms", sse_key: key + "0"}),
            "PutObject with aws/s3 key": ("s3:PutObject", obj, {**tls, sse: "aws:kms"}),
        }
        for label, (action, resource, context) in cases.items():
            if is_allowed(statements, action, resource, context):
                violations.append(f"{bucket.urn}: bucket policy allows {label}")
        good = {**tls, sse: "aws:kms", sse_key: key}
        if not is_allowed(statements, "s3:PutObject", obj, good):
            violations.append(f"{bucket.urn}: bucket policy denies a TLS upload with the stack key")
    return violations


def _user_data(resource: Registered) -> str:
    text = resource.inputs.get("userData") or ""
    return base64.b64decode(text).decode() if resource.type == LT else text


def volume_encryption(run: ProgramRun, keys: set[str] | None = None) -> list[str]:
    """Every EBS volume (templates, instances) and the SecureString use the stack key.

    `keys` defaults to the run's KMS keys; a component run without the key passes it in.
    """
    keys, violations = keys or key_arns(run), []
    templates = {t.urn for t in run.of_type(LT)}
    for lt in run.of_type(LT):
        mappings = lt.inputs.get("blockDeviceMappings") or []
        if not mappings:
            violations.append(f"{lt.urn}: no block device mappings (root volume unencrypted)")
        for m in mappings:
            ebs = m.get("ebs") or {}
            if ebs.get("encrypted") != "true" or ebs.get("kmsKeyId") not in keys:
                violations.append(f"{lt.urn}: {m.get('deviceName')} not encrypted by the stack key")
    for inst in run.of_type(INSTANCE):
        from_template = set(inst.property_dependencies.get("launchTemplate", [])) & templates
        root = inst.inputs.get("rootBlockDevice")
        if root is None and not from_template:
            violations.append(f"{inst.urn}: root volume not declared encrypted")
        for dev in ([root] if root else []) + list(inst.inputs.get("ebsBlockDevices") or []):
            if dev.get("encrypted") is not True or dev.get("kmsKeyId") not in keys:
                violations.append(f"{inst.urn}: volume not encrypted by the stack key: {dev}")
    for param in run.of_type(PARAMETER):
        if param.inputs.get("type") == "String" and _public_certificate(param.inputs.get("value")):
            continue
        if param.inputs.get("type") != "SecureString" or param.inputs.get("keyId") not in keys:
            violations.append(f"{param.urn}: not a SecureString under the stack key")
    return violations


def _public_certificate(value) -> bool:
    """PEM certificates and nothing else: the one kind of value a plain String parameter may hold."""
    if not isinstance(value, str) or "PRIVATE KEY" in value:
        return False
    blocks = re.findall(r"-----BEGIN ([A-Z ]+)-----", value)
    return bool(blocks) and set(blocks) == {"CERTIFICATE"}


def imdsv2(run: ProgramRun) -> list[str]:
    """Instances and launch templates require IMDSv2 tokens with hop limit 1."""
    violations = []
    for r in run.of_type(LT) + run.of_type(INSTANCE):
        meta = r.inputs.get("metadataOptions") or {}
        if meta.get("httpTokens") != "required" or meta.get("httpPutResponseHopLimit") != 1:
            violations.append(f"{r.urn}: IMDSv2 not required with hop limit 1: {meta}")
    return violations


def _ingress_rules(run: ProgramRun) -> list[tuple[Registered, dict]]:
    """(resource, rule) for inline, standalone (vpc) and legacy (ec2) ingress rules."""
    rules = [(sg, rule) for sg in run.of_type(SG) for rule in sg.inputs.get("ingress") or []]
    rules += [(r, r.inputs) for r in run.of_type(INGRESS)]
    rules += [(r, r.inputs) for r in run.of_type(LEGACY_RULE) if r.inputs.get("type") == "ingress"]
    return rules


def _sources(rule: dict) -> set[str]:
    cidrs = list(rule.get("cidrBlocks") or []) + list(rule.get("ipv6CidrBlocks") or [])
    cidrs += [rule[k] for k in ("cidrIpv4", "cidrIpv6") if rule.get(k)]
    return set(cidrs)


def no_internet_ingress(run: ProgramRun) -> list[str]:
    """No ingress from 0.0.0.0/0 or ::/0 (any form, any port) and no CIDR-reachable SSH."""
    violations = []
    for resource, rule in _ingress_rules(run):
        sources = _sources(rule)
        if sources & OPEN_CIDRS or any(ipaddress.ip_network(c).prefixlen == 0 for c in sources):
            violations.append(f"{resource.urn}: ingress from the internet {sorted(sources)}")
        low, high = rule.get("fromPort"), rule.get("toPort")
        all_ports = str(rule.get("ipProtocol", rule.get("protocol"))) == "-1"
        if (sources or rule.get("prefixListId")) and (all_ports or (low or 0) <= 22 <= (high or 0)):
            violations.append(f"{resource.urn}: SSH (22) reachable from {sorted(sources)}")
    return violations


def training_group_isolated(run: ProgramRun) -> list[str]:
    """Ingress to the training group comes only from the training group itself."""
    sg = run.named("network-training-sg")
    violations = [f"{sg.urn}: inline ingress {r}" for r in sg.inputs.get("ingress") or []]
    rules = [r for r in run.of_type(INGRESS) if r.inputs.get("securityGroupId") == sg.id]
    if not rules:
        violations.append(f"{sg.urn}: no self-referencing ingress rule (NCCL/EFA need it)")
    for rule in rules:
        if rule.inputs.get("referencedSecurityGroupId") != sg.id or _sources(rule.inputs):
            violations.append(f"{rule.urn}: training ingress not from the training group")
    return violations


def default_group_empty(run: ProgramRun) -> list[str]:
    """Each VPC's default security group is managed and has no rules."""
    violations = []
    for vpc in run.of_type(VPC):
        groups = run.attached(DEFAULT_SG, vpc, "vpcId")
        if len(groups) != 1:
            violations.append(f"{vpc.urn}: default security group not managed")
        for g in groups:
            if g.inputs.get("ingress") or g.inputs.get("egress"):
                violations.append(f"{g.urn}: default security group has rules")
    return violations


def flow_logs(run: ProgramRun) -> list[str]:
    """Each VPC logs ALL traffic into the (encrypted) logs bucket."""
    logs = [b for b in run.of_type(BUCKET) if b.inputs.get("tags", {}).get("purpose") == "logs"]
    violations = []
    for vpc in run.of_type(VPC):
        found = run.attached(FLOW_LOG, vpc, "vpcId")
        good = [
            f
            for f in found
            if f.inputs.get("trafficType") == "ALL"
            and f.inputs.get("logDestinationType") == "s3"
            and any(f.inputs.get("logDestination", "").startswith(b.state["arn"] + "/") for b in logs)
        ]
        if not good:
            violations.append(f"{vpc.urn}: no flow log of ALL traffic into the logs bucket")
    return violations


def no_public_ips(run: ProgramRun) -> list[str]:
    """No interface, instance or private subnet hands out a public IP."""
    violations = []
    for lt in run.of_type(LT):
        for ni in lt.inputs.get("networkInterfaces") or []:
            if ni.get("associatePublicIpAddress") != "false":
                violations.append(f"{lt.urn}: interface may get a public IP: {ni}")
    for inst in run.of_type(INSTANCE):
        if inst.inputs.get("associatePublicIpAddress") is True:
            violations.append(f"{inst.urn}: instance gets a public IP")
    for subnet in run.of_type(SUBNET):
        if subnet.inputs.get("mapPublicIpOnLaunch") is not False:
            violations.append(f"{subnet.urn}: subnet maps public IPs on launch")
    return violations


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _documents(run: ProgramRun) -> list[tuple[Registered, dict]]:
    docs = [(p, json.loads(p.inputs["policy"])) for p in run.of_type(ROLE_POLICY)]
    docs += [(r, json.loads(r.inputs["assumeRolePolicy"])) for r in run.of_type(ROLE)]
    docs += [(k, json.loads(k.inputs["policy"])) for k in run.of_type(KEY)]
    docs += [(b, json.loads(b.inputs["policy"])) for b in run.of_type(BUCKET_POLICY)]
    return docs


def no_wildcard_iam(run: ProgramRun) -> list[str]:
    """No Allow with a wildcard action or NotAction, no bare `*` principal, EC2-only trust."""
    violations = []
    for resource, doc in _documents(run):
        for s in doc["Statement"]:
            actions, resources = _as_list(s.get("Action", [])), _as_list(s.get("Resource", []))
            allow, principal = s["Effect"] == "Allow", s.get("Principal")
            if allow and ("NotAction" in s or any("*" in a for a in actions)):
                violations.append(f"{resource.urn}: {s.get('Sid')} allows wildcard actions")
            aws_principals = _as_list(principal.get("AWS", [])) if isinstance(principal, dict) else []
            if allow and (principal == "*" or "*" in aws_principals):
                violations.append(f"{resource.urn}: {s.get('Sid')} allows a bare * principal")
            if resource.type == ROLE_POLICY and "*" in resources:
                violations.append(f"{resource.urn}: {s.get('Sid')} applies to Resource *")
            if resource.type == ROLE and principal != {"Service": "ec2.amazonaws.com"}:
                violations.append(f"{resource.urn}: role trusts {principal}, not only EC2")
    for r in run.resources:
        if r.type in ("aws:iam/user:User", "aws:iam/accessKey:AccessKey"):
            violations.append(f"{r.urn}: IAM users and access keys are not allowed")
    return violations


def no_secret_in_user_data(run: ProgramRun) -> list[str]:
    """User data holds no generated secret and nothing that looks like a credential."""
    secrets = [p.state["result"] for p in run.of_type(PASSWORD)]
    # Each line of a key's PEM body: a leak need not carry the armour.
    pems = [k.state[f] for k in run.of_type(TLS_KEY) for f in ("privateKeyPem", "privateKeyPemPkcs8")]
    secrets += [line for pem in pems for line in pem.splitlines() if line and not line.startswith("-----")]
    violations = []
    for r in run.of_type(LT) + run.of_type(INSTANCE):
        text = _user_data(r)
        if any(s in text for s in secrets) or any(p.search(text) for p in SECRET_PATTERNS):
            violations.append(f"{r.urn}: user data contains a secret")
    return violations


def _supports_tags(typ: str) -> bool:
    package, rest = typ.split(":", 1)
    module_path, cls_name = rest.split(":")
    module = module_path.split("/")[0]
    pkg = importlib.import_module(f"pulumi_{package}" + ("" if module == "index" else f".{module}"))
    cls = getattr(pkg, cls_name)
    return "tags" in inspect.signature(cls._internal_init).parameters


def tags_present(run: ProgramRun) -> list[str]:
    """Every taggable resource carries `project`, `stack` and `component`."""
    violations = []
    for r in run.resources:
        if r.custom and _supports_tags(r.type):
            tags = r.inputs.get("tags") or {}
            if isinstance(tags, list):  # an Auto Scaling group's tag blocks
                tags = {t["key"]: t["value"] for t in tags}
            missing = {"project", "stack", "component"} - set(tags)
            if missing:
                violations.append(f"{r.urn}: missing tags {sorted(missing)}")
    return violations


def kms_key_hygiene(run: ProgramRun) -> list[str]:
    """The stack key rotates and has a 7-30 day deletion window."""
    violations = []
    for key in run.of_type(KEY):
        if key.inputs.get("enableKeyRotation") is not True:
            violations.append(f"{key.urn}: rotation off")
        if not 7 <= key.inputs.get("deletionWindowInDays", 30) <= 30:
            violations.append(f"{key.urn}: deletion window outside 7-30 days")
    return violations


def internal_tls_passthrough(run: ProgramRun) -> list[str]:
    """Load balancers are internal, and each listener passes TLS through: a TCP listener to a TCP
    target group whose health check speaks HTTPS to the hosts (their port is a TLS port)."""
    violations = [
        f"{lb.urn}: load balancer is not internal" for lb in run.of_type(NLB) if lb.inputs.get("internal") is not True
    ]
    groups = {g.urn: g for g in run.of_type(TARGET_GROUP)}
    for listener in run.of_type(LISTENER):
        targets = [groups[u] for u in listener.property_dependencies.get("defaultActions", []) if u in groups]
        if listener.inputs.get("protocol") != "TCP" or not targets:
            violations.append(f"{listener.urn}: not a TCP pass-through listener to a target group")
        for group in targets:
            health = group.inputs.get("healthCheck") or {}
            if group.inputs.get("protocol") != "TCP" or health.get("protocol") != "HTTPS":
                violations.append(f"{listener.urn}: forwards to {group.urn}, whose hosts are not checked over HTTPS")
    return violations


ALL_CHECKS = [
    bucket_encryption,
    public_access_block,
    tls_only_and_key_only_policy,
    volume_encryption,
    imdsv2,
    no_internet_ingress,
    training_group_isolated,
    default_group_empty,
    flow_logs,
    no_public_ips,
    no_wildcard_iam,
    no_secret_in_user_data,
    tags_present,
    kms_key_hygiene,
    internal_tls_passthrough,
    hosts_behind_the_load_balancer,
    training_nodes_self_heal,
]
