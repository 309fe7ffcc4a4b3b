"""stratus CrossGuard rules on single resources; every rule is mandatory.

Each rule checks one control of `docs/security.md` on one resource's inputs. Rules that need
to join resources (a bucket and its encryption configuration, a volume and the stack key) are
in `stack_rules.py`. `ALL_POLICIES` lists both; `__main__.py` builds the pack from it.
"""

from __future__ import annotations

import re

import rulekit as k
import serving_rules
import stack_rules
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

MANDATORY = EnforcementLevel.MANDATORY
IMDS_TYPES = (k.INSTANCE, k.LAUNCH_TEMPLATE)
SG = "aws:ec2/securityGroup:SecurityGroup"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
TAGGABLE = frozenset(
    {
        "aws:ec2/vpc:Vpc",
        "aws:ec2/subnet:Subnet",
        "aws:ec2/routeTable:RouteTable",
        "aws:ec2/internetGateway:InternetGateway",
        "aws:ec2/natGateway:NatGateway",
        "aws:ec2/eip:Eip",
        "aws:ec2/vpcEndpoint:VpcEndpoint",
        SG,
        INGRESS,
        EGRESS,
        "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
        "aws:ec2/flowLog:FlowLog",
        k.INSTANCE,
        k.LAUNCH_TEMPLATE,
        "aws:ec2/placementGroup:PlacementGroup",
        "aws:ebs/volume:Volume",
        k.KMS_KEY,
        k.BUCKET,
        "aws:iam/role:Role",
        "aws:iam/instanceProfile:InstanceProfile",
        "aws:iam/serviceLinkedRole:ServiceLinkedRole",
        "aws:iam/policy:Policy",
        "aws:ssm/parameter:Parameter",
        "aws:cloudwatch/logGroup:LogGroup",
        "aws:lb/loadBalancer:LoadBalancer",
        "aws:lb/targetGroup:TargetGroup",
        "aws:lb/listener:Listener",
        "aws:autoscaling/group:Group",
    }
)
"""Resource types that accept tags and so must carry the stratus tags."""
POLICY_DOCUMENT_TYPES = (
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/policy:Policy",
    "aws:s3/bucketPolicy:BucketPolicy",
    k.KMS_KEY,
)


def _where(args) -> str:
    return f"{k.short_type(args.resource_type)} '{args.name}'"


def imdsv2_required(args, report_violation) -> None:
    """Instances and launch templates require IMDSv2 session tokens with a hop limit of 1."""
    if args.resource_type not in IMDS_TYPES:
        return
    tokens = k.get(args.props, "metadataOptions", "httpTokens")
    hops = k.get(args.props, "metadataOptions", "httpPutResponseHopLimit")
    if tokens != "required" or hops not in (1, k.UNKNOWN):
        report_violation(
            f"{_where(args)} allows IMDSv1 or a metadata hop limit above 1 (http_tokens={tokens!r}, "
            f"hop limit={hops!r}). Set metadata_options to http_tokens='required' and "
            "http_put_response_hop_limit=1."
        )


def _ingress_rules(args) -> list[dict]:
    if args.resource_type == SG:
        return k.items(args.props, "ingress")
    if args.resource_type == INGRESS:
        return [args.props]
    if args.resource_type == LEGACY_RULE and k.get(args.props, "type") == "ingress":
        return [args.props]
    return []


def _cidrs(rule) -> list:
    found = k.items(rule, "cidrBlocks") + k.items(rule, "ipv6CidrBlocks")
    return found + [k.get(rule, key) for key in ("cidrIpv4", "cidrIpv6") if k.get(rule, key)]


def no_internet_ingress(args, report_violation) -> None:
    """No security group ingress from 0.0.0.0/0 or ::/0, whatever the port range."""
    for rule in _ingress_rules(args):
        open_cidrs = [c for c in _cidrs(rule) if k.is_open(c)]
        if open_cidrs:
            report_violation(
                f"{_where(args)} allows ingress from the internet ({', '.join(open_cidrs)}). Remove the rule or "
                "restrict it to private ranges; reach hosts through Session Manager or a load balancer instead."
            )


def no_ssh_from_cidr(args, report_violation) -> None:
    """Port 22 is not reachable from any CIDR or prefix list (operators use Session Manager)."""
    for rule in _ingress_rules(args):
        sources = _cidrs(rule) + ([k.get(rule, "prefixListId")] if k.get(rule, "prefixListId") else [])
        protocol = str(k.get(rule, "ipProtocol", default=k.get(rule, "protocol")))
        low, high = k.get(rule, "fromPort", default=0), k.get(rule, "toPort", default=0)
        ports_known = k.UNKNOWN not in (low, high)
        covers_22 = protocol in ("-1", "all") or (ports_known and low <= 22 <= high)
        if sources and covers_22:
            report_violation(
                f"{_where(args)} opens SSH (port 22) to {sources}. Delete the rule: stratus hosts are reached "
                "with AWS Systems Manager Session Manager, never SSH."
            )


def _documents(args) -> list[tuple[str, object]]:
    props, docs = args.props, []
    if args.resource_type in POLICY_DOCUMENT_TYPES:
        docs.append(("policy", k.document(props, "policy")))
    if args.resource_type == "aws:iam/role:Role":
        docs.append(("assume_role_policy", k.document(props, "assumeRolePolicy")))
        docs += [
            (f"inline policy {k.get(p, 'name')}", k.document(p, "policy")) for p in k.items(props, "inlinePolicies")
        ]
    return docs


def no_wildcard_allow(args, report_violation) -> None:
    """No Allow statement uses a wildcard action or NotAction, or grants to a bare `*` principal."""
    for label, doc in _documents(args):
        for statement in k.statements(doc):
            sid = statement.get("Sid", "(no Sid)")
            wild = k.wildcard_actions(statement)
            if wild:
                report_violation(
                    f"{_where(args)} {label} statement {sid} allows wildcard actions {wild}. List the exact "
                    "actions the principal needs."
                )
            if k.public_principal(statement):
                report_violation(
                    f"{_where(args)} {label} statement {sid} allows any principal ('*'). Name the account, role "
                    "or service principal instead."
                )


def kms_rotation(args, report_violation) -> None:
    """Customer-managed keys rotate and keep a 7-30 day deletion window."""
    if args.resource_type != k.KMS_KEY:
        return
    if k.get(args.props, "enableKeyRotation") is not True:
        report_violation(f"{_where(args)} does not rotate its key material. Set enable_key_rotation=True.")
    window = k.get(args.props, "deletionWindowInDays", default=30)
    if window is not k.UNKNOWN and not 7 <= window <= 30:
        report_violation(f"{_where(args)} has a deletion window of {window} days. Set deletion_window_in_days to 7-30.")


def no_public_ip(args, report_violation) -> None:
    """No instance, launch-template interface or subnet assigns a public IPv4 address."""
    props, where = args.props, _where(args)
    if args.resource_type == k.INSTANCE and k.get(props, "associatePublicIpAddress") is True:
        report_violation(f"{where} gets a public IP. Set associate_public_ip_address=False and use Session Manager.")
    if args.resource_type == k.LAUNCH_TEMPLATE:
        for ni in k.items(props, "networkInterfaces"):
            if k.get(ni, "associatePublicIpAddress") not in ("false", k.UNKNOWN):
                report_violation(
                    f"{where} has a network interface that may get a public IP. Set "
                    "associate_public_ip_address='false' on every interface."
                )
    if args.resource_type == "aws:ec2/subnet:Subnet" and k.get(props, "mapPublicIpOnLaunch") is True:
        report_violation(f"{where} maps public IPs on launch. Set map_public_ip_on_launch=False.")


def default_security_group_empty(args, report_violation) -> None:
    """The VPC default security group is managed without any rule."""
    if args.resource_type != "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup":
        return
    if k.items(args.props, "ingress") or k.items(args.props, "egress"):
        report_violation(f"{_where(args)} has rules. Declare aws.ec2.DefaultSecurityGroup with no ingress or egress.")


def _public_certificates(value) -> bool:
    """PEM certificates and nothing else (unknown during preview counts: checked again at update)."""
    if value is k.UNKNOWN:
        return True
    if not isinstance(value, str) or "PRIVATE KEY" in value:
        return False
    blocks = re.findall(r"-----BEGIN ([A-Z ]+)-----", value)
    return bool(blocks) and set(blocks) == {"CERTIFICATE"}


def ssm_parameter_secure(args, report_violation) -> None:
    """SSM parameters are SecureStrings encrypted with a customer-managed key; a plain String may
    hold public certificates only."""
    if args.resource_type != "aws:ssm/parameter:Parameter":
        return
    if k.get(args.props, "type") == "String" and _public_certificates(k.get(args.props, "value")):
        return
    if k.get(args.props, "type") != "SecureString" or not k.get(args.props, "keyId"):
        report_violation(
            f"{_where(args)} is not a SecureString under the stack key. Set type='SecureString' and key_id to the "
            "stack's KMS key ARN."
        )


def required_tags(args, report_violation) -> None:
    """Every taggable resource carries the project, stack and component tags."""
    if args.resource_type not in TAGGABLE:
        return
    tags = k.get(args.props, "tags", default={})
    if tags is k.UNKNOWN:
        return
    if args.resource_type == "aws:autoscaling/group:Group":  # tag blocks, not a map
        tags = {k.get(t, "key"): k.get(t, "value") for t in k.items(args.props, "tags")}
    missing = [t for t in k.REQUIRED_TAGS if not k.get(tags, t)]
    if missing:
        report_violation(f"{_where(args)} lacks the tags {missing}. Add project, stack and component tags.")


def _all_rules(args) -> list[dict]:
    if args.resource_type in (INGRESS, EGRESS, LEGACY_RULE):
        return [args.props]
    if args.resource_type == SG:
        return k.items(args.props, "ingress") + k.items(args.props, "egress")
    return []


def rule_description(args, report_violation) -> None:
    """Every security group rule says what it is for (a description)."""
    for rule in _all_rules(args):
        if not k.get(rule, "description"):
            report_violation(f"{_where(args)} has a rule without a description. Set description to what it allows.")


def _settings_missing(args) -> list[str]:
    props = args.props
    if args.resource_type == k.INSTANCE:
        checks = (
            ("monitoring=True", k.get(props, "monitoring") is True),
            ("ebs_optimized=True", k.get(props, "ebsOptimized") is True),
            ("iam_instance_profile", bool(k.get(props, "iamInstanceProfile"))),
        )
    elif args.resource_type == k.LAUNCH_TEMPLATE:
        profile = k.get(props, "iamInstanceProfile", default={})
        checks = (
            ("monitoring.enabled=True", k.get(props, "monitoring", "enabled") in (True, k.UNKNOWN)),
            ("ebs_optimized='true'", k.get(props, "ebsOptimized") in ("true", True, k.UNKNOWN)),
            (
                "iam_instance_profile",
                profile is k.UNKNOWN or bool(k.get(profile, "arn") or k.get(profile, "name")),
            ),
        )
    else:
        return []
    return [setting for setting, ok in checks if not ok]


def explicit_settings(args, report_violation) -> None:
    """Launch templates (and any instance) declare detailed monitoring, EBS optimisation and an
    instance profile themselves (their volumes: `stack_rules.volumes_encrypted`)."""
    missing = _settings_missing(args)
    if missing:
        report_violation(f"{_where(args)} does not set {', '.join(missing)}. Set them explicitly.")


def _resource(name, description, validate) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=validate, enforcement_level=MANDATORY)


RESOURCE_POLICIES = [
    _resource(
        "aws-ec2-instance-imdsv2-required",
        "Instances and launch templates require IMDSv2, hop limit 1.",
        imdsv2_required,
    ),
    _resource("aws-ec2-securitygroup-no-internet-ingress", "No ingress from 0.0.0.0/0 or ::/0.", no_internet_ingress),
    _resource("aws-ec2-securitygroup-no-ssh", "Port 22 is closed to every CIDR.", no_ssh_from_cidr),
    _resource(
        "aws-iam-policy-no-wildcard-allow",
        "No wildcard actions or public principals in Allow statements.",
        no_wildcard_allow,
    ),
    _resource("aws-kms-key-rotation-enabled", "KMS keys rotate; deletion window 7-30 days.", kms_rotation),
    _resource("aws-ec2-instance-no-public-ip", "No public IPs on instances, interfaces or subnets.", no_public_ip),
    _resource(
        "aws-ec2-defaultsecuritygroup-no-rules",
        "The default security group has no rules.",
        default_security_group_empty,
    ),
    _resource(
        "aws-ssm-parameter-secure-string",
        "SSM parameters are SecureStrings under a CMK (a String holds public certificates only).",
        ssm_parameter_secure,
    ),
    _resource("aws-tagging-resource-required-tags", "Taggable resources carry project/stack/component.", required_tags),
    _resource(
        "aws-ec2-securitygroup-rule-description", "Every security group rule has a description.", rule_description
    ),
    _resource(
        "aws-ec2-launchtemplate-explicit-settings",
        "Launch templates (and instances) set detailed monitoring, EBS optimisation and a profile.",
        explicit_settings,
    ),
]

STACK_POLICIES = [
    StackValidationPolicy(name=name, description=description, validate=validate, enforcement_level=MANDATORY)
    for name, description, validate in stack_rules.RULES + serving_rules.RULES
]

ALL_POLICIES = RESOURCE_POLICIES + STACK_POLICIES
"""Every rule of the pack, resource rules first."""
