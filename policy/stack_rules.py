"""stratus CrossGuard rules that join resources across the stack; every rule is mandatory.

pulumi-aws v7 keeps bucket settings in separate resources and volumes name their key by ARN,
so these rules follow the engine's property dependencies: a setting belongs to the bucket its
`bucket` input was computed from, and "the stack key" is a KMS key declared in this stack.
"""

from __future__ import annotations

import rulekit as k

SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
VOLUME = "aws:ebs/volume:Volume"
VPC = "aws:ec2/vpc:Vpc"
FLOW_LOG = "aws:ec2/flowLog:FlowLog"
GROUP = "aws:autoscaling/group:Group"
PAB_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")


def _name(resource) -> str:
    return f"{k.short_type(resource.resource_type)} '{resource.name}'"


def _uses_stack_key(resource, prop: str, key_id, resources) -> bool:
    """Whether `key_id` (the value at `prop`) comes from a KMS key declared in this stack."""
    if not key_id:
        return False
    if k.depends_on(resource, prop, k.KMS_KEY):
        return True
    arns = {k.get(key.props, "arn") for key in k.of_type(resources, k.KMS_KEY)}
    return key_id in arns - {None, k.UNKNOWN}


def bucket_encryption(args, report_violation) -> None:
    """Every bucket has exactly one SSE-KMS configuration using the stack key, bucket key on."""
    for bucket in k.of_type(args.resources, k.BUCKET):
        configs = k.attached(args.resources, SSE, bucket)
        fix = (
            "Add one aws.s3.BucketServerSideEncryptionConfiguration with sse_algorithm='aws:kms', "
            "kms_master_key_id set to the stack key's ARN and bucket_key_enabled=True."
        )
        if len(configs) != 1:
            report_violation(f"{_name(bucket)} has {len(configs)} encryption configurations. {fix}", bucket.urn)
            continue
        rules = k.items(configs[0].props, "rules")
        good = bool(rules) and all(
            k.get(rule, "applyServerSideEncryptionByDefault", "sseAlgorithm") == "aws:kms"
            and k.get(rule, "bucketKeyEnabled") is True
            and _uses_stack_key(
                configs[0], "rules", k.get(rule, "applyServerSideEncryptionByDefault", "kmsMasterKeyId"), args.resources
            )
            for rule in rules
        )
        if not good:
            report_violation(f"{_name(bucket)} is not encrypted with the stack's KMS key. {fix}", bucket.urn)


def bucket_public_access_block(args, report_violation) -> None:
    """Every bucket has a public access block with all four flags on."""
    for bucket in k.of_type(args.resources, k.BUCKET):
        blocks = k.attached(args.resources, PAB, bucket)
        if not any(all(k.get(b.props, f) is True for f in PAB_FLAGS) for b in blocks):
            report_violation(
                f"{_name(bucket)} has no public access block with all four flags on. Add an "
                "aws.s3.BucketPublicAccessBlock with block_public_acls, block_public_policy, ignore_public_acls and "
                "restrict_public_buckets set to True.",
                bucket.urn,
            )


def _denies_plain_http(statement) -> bool:
    condition = statement.get("Condition") or {}
    secure = (condition.get("Bool") or {}).get("aws:SecureTransport")
    return (
        statement.get("Effect") == "Deny"
        and str(secure).lower() == "false"
        and any(a in ("s3:*", "*") for a in k.as_list(statement.get("Action")))
        and k.as_list(statement.get("Principal")) in (["*"], [{"AWS": "*"}])
    )


def bucket_policy_tls_only(args, report_violation) -> None:
    """Every bucket has a policy denying all S3 actions over plain HTTP."""
    for bucket in k.of_type(args.resources, k.BUCKET):
        policies = k.attached(args.resources, BUCKET_POLICY, bucket)
        docs = [k.document(p.props, "policy") for p in policies]
        if any(d is k.UNKNOWN for d in docs):
            continue  # computed from ARNs not known at preview; checked again during the update
        if not any(_denies_plain_http(s) for d in docs for s in k.statements(d)):
            report_violation(
                f"{_name(bucket)} accepts requests over plain HTTP. Attach an aws.s3.BucketPolicy with a Deny of "
                "s3:* for Principal '*' when aws:SecureTransport is 'false'.",
                bucket.urn,
            )


def _check_device(owner, prop: str, device, encrypted_values, resources, report_violation) -> None:
    encrypted = k.get(device, "encrypted")
    key_id = k.get(device, "kmsKeyId")
    if encrypted not in encrypted_values or not _uses_stack_key(owner, prop, key_id, resources):
        report_violation(
            f"{_name(owner)} has a volume ({k.get(device, 'deviceName', default='root')}) not encrypted with the "
            "stack's KMS key. Set encrypted and kms_key_id to the stack key's ARN.",
            owner.urn,
        )


def volumes_encrypted(args, report_violation) -> None:
    """Every EBS volume (launch templates, instances, standalone volumes) uses the stack key."""
    resources = args.resources
    for lt in k.of_type(resources, k.LAUNCH_TEMPLATE):
        mappings = k.items(lt.props, "blockDeviceMappings")
        if not mappings:
            report_violation(
                f"{_name(lt)} declares no block device mappings, so its root volume would use the AMI's "
                "(unencrypted) default. Map the root device with encrypted='true' and the stack key.",
                lt.urn,
            )
        for m in mappings:
            _check_device(
                lt, "blockDeviceMappings", k.get(m, "ebs", default={}), ("true", True), resources, report_violation
            )
    for inst in k.of_type(resources, k.INSTANCE):
        # Declared on the instance itself even when a launch template maps it too: scanners (and
        # readers of the instance) do not follow the template.
        root = k.get(inst.props, "rootBlockDevice")
        if not root:
            report_violation(
                f"{_name(inst)} does not declare its root volume encrypted. Set root_block_device with encrypted=True "
                "and the stack key on the instance.",
                inst.urn,
            )
        if root:
            _check_device(inst, "rootBlockDevice", root, (True,), resources, report_violation)
        for dev in k.items(inst.props, "ebsBlockDevices"):
            _check_device(inst, "ebsBlockDevices", dev, (True,), resources, report_violation)
    for volume in k.of_type(resources, VOLUME):
        _check_device(volume, "kmsKeyId", volume.props, (True,), resources, report_violation)


def vpc_flow_logs(args, report_violation) -> None:
    """Every VPC has a flow log of ALL traffic."""
    for vpc in k.of_type(args.resources, VPC):
        logs = [f for f in k.attached(args.resources, FLOW_LOG, vpc, "vpcId") if k.get(f.props, "trafficType") == "ALL"]
        if not logs:
            report_violation(
                f"{_name(vpc)} has no flow log of ALL traffic. Add an aws.ec2.FlowLog with traffic_type='ALL' "
                "delivering to the encrypted logs bucket.",
                vpc.urn,
            )


def group_launch_template(args, report_violation) -> None:
    """Every Auto Scaling group launches from a launch template of this stack (the template's
    IMDSv2, volumes and interfaces are checked by their own rules), never a launch configuration
    or instance types mixed in outside the template."""
    for group in k.of_type(args.resources, GROUP):
        template = k.depends_on(group, "launchTemplate", k.LAUNCH_TEMPLATE)
        other = [p for p in ("launchConfiguration", "mixedInstancesPolicy") if k.get(group.props, p)]
        if not template or other:
            how = f"sets {', '.join(other)}" if other else "has no launch template of this stack"
            report_violation(
                f"{_name(group)} {how}. Set launch_template to the stack's aws.ec2.LaunchTemplate (id and "
                "latest_version) and remove launch_configuration and mixed_instances_policy.",
                group.urn,
            )


RULES = [
    (
        "aws-s3-bucket-sse-kms-stack-key",
        "Buckets use SSE-KMS with the stack key and the bucket key.",
        bucket_encryption,
    ),
    ("aws-s3-bucket-public-access-block", "Buckets block all public access.", bucket_public_access_block),
    ("aws-s3-bucket-policy-tls-only", "Bucket policies deny plain HTTP.", bucket_policy_tls_only),
    ("aws-ec2-volume-encrypted-stack-key", "EBS volumes are encrypted with the stack key.", volumes_encrypted),
    ("aws-ec2-vpc-flow-logs-enabled", "VPCs log ALL traffic.", vpc_flow_logs),
    (
        "aws-autoscaling-group-launch-template",
        "Auto Scaling groups launch from a launch template of the stack.",
        group_launch_template,
    ),
]
"""(name, description, validate) of each stack rule."""
