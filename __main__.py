"""stratus Pulumi program: a secure GPU training and serving stack on AWS.

    cp Pulumi.example.yaml Pulumi.dev.yaml && pulumi stack init dev
    pulumi preview --policy-pack policy    # config errors and the budget guard fail here
    pulumi up
    ./scripts/plan.sh Pulumi.dev.yaml      # offline: resources, policy verdicts, cost
    ./scripts/plan.sh --update-ami Pulumi.dev.yaml   # pin the newest AMIs into the stack file

Reads the config once, builds one component per concern, and exports the outputs that
`scripts/launch.sh --stack` and `runtime.remote` read (names fixed in `runtime/contract.py`).
"""

from datetime import UTC

import pulumi
import pulumi_aws as aws

from infra.builders.policies import tls_parameter_names, token_parameter_arn, token_parameter_name
from infra.builders.userdata import trainer_user_data
from infra.components.base import base_tags
from infra.components.iam import Iam, IamArgs, autoscaling_service_role
from infra.components.network import Network, NetworkArgs, lookup_zones
from infra.components.quotas import check_quotas
from infra.components.serving import Serving, ServingArgs
from infra.components.storage import Storage, StorageArgs
from infra.components.training import Training, TrainingArgs
from infra.config.capacity import block_warnings
from infra.config.catalog import CATALOG
from infra.config.cost import enforce_budget, estimate_cost
from infra.config.stack import load_config
from runtime import contract

cfg = load_config()
estimate = estimate_cost(cfg)
enforce_budget(estimate, cfg.max_hourly_usd)
pulumi.log.info("estimated cost:\n" + estimate.table())
if not estimate.complete:
    pulumi.log.warn("the cost estimate is incomplete (no price for: " + "; ".join(estimate.missing) + ")")
for ami_key, pinned in (("trainer-ami", cfg.trainer_ami), ("serving-ami", cfg.serving_ami)):
    if pinned is None:
        pulumi.log.warn(
            f"stratus:{ami_key} is not pinned: the newest image is looked up at every preview (running "
            "instances ignore a newer one). Pin it: ./scripts/plan.sh --update-ami Pulumi.<stack>.yaml"
        )
for line in block_warnings(cfg):
    pulumi.log.warn(line)

if cfg.quota_check:
    for need in check_quotas(cfg):
        pulumi.log.info(f"quota check passed: {need.describe()}")
account_id = aws.get_caller_identity().account_id
partition = aws.get_partition().partition
project, stack, tags = pulumi.get_project(), pulumi.get_stack(), base_tags()
# Names that must be unique per account and region carry the organization too: two projects
# (or two organizations' copies of this one) with a stack of the same name never collide.
qualified = f"{pulumi.get_organization()}/{project}/{stack}"
trainer_type, server_type = CATALOG[cfg.trainer_instance_type], CATALOG[cfg.serving_instance_type]
zones = lookup_zones(
    cfg.region,
    cfg.num_availability_zones,
    cfg.training_availability_zone,
    {"trainer-instance-type": trainer_type.name, "serving-instance-type": server_type.name},
    cfg.zone_offerings_lookup,
)

# Before the key: its policy lets EC2 Auto Scaling encrypt the groups' volumes with it.
autoscaling_role, autoscaling_role_resources = autoscaling_service_role(
    partition=partition, account_id=account_id, tags=tags
)
storage = Storage(
    "storage",
    StorageArgs(
        account_id=account_id,
        partition=partition,
        region=cfg.region,
        tags=tags,
        name_prefix=f"{project}-{stack}",
        alias_path=qualified,
        kms_deletion_window_days=cfg.kms_deletion_window_days,
        checkpoint_noncurrent_days=cfg.checkpoint_noncurrent_days,
        logs_expiration_days=cfg.logs_expiration_days,
        force_destroy=cfg.force_destroy_buckets,
        autoscaling_role=autoscaling_role,
        key_depends_on=autoscaling_role_resources,
    ),
)
buckets = storage.buckets
network = Network(
    "network",
    NetworkArgs(
        vpc_cidr=cfg.vpc_cidr,
        zones=zones,
        region=cfg.region,
        serving_port=cfg.serving_port,
        serving_grpc_port=cfg.serving_grpc_port,
        serving_allowed_cidrs=cfg.serving_allowed_cidrs,
        flow_log_bucket_arn=buckets["logs"].arn,
        tags=tags,
        egress_enabled=cfg.egress_enabled,
        interface_endpoints=cfg.interface_endpoints,
        flow_log_depends_on=[storage],
    ),
)
token_name = token_parameter_name(qualified)
tls_cert_name, tls_key_name = tls_parameter_names(qualified)


def parameter_arn(name: str) -> str:
    return token_parameter_arn(partition=partition, region=cfg.region, account_id=account_id, name=name)


iam = Iam(
    "iam",
    IamArgs(
        bucket_arns={purpose: bucket.arn for purpose, bucket in buckets.items()},
        key_arn=storage.key_arn,
        region=cfg.region,
        partition=partition,
        tags=tags,
        token_parameter_arn=parameter_arn(token_name),
        tls_parameter_arns=(parameter_arn(tls_cert_name), parameter_arn(tls_key_name)),
    ),
)
bucket_names = pulumi.Output.all(**{p: b.bucket for p, b in buckets.items()})
scratch_mode, scratch_gb = cfg.scratch
training = Training(
    "training",
    TrainingArgs(
        instance_type=trainer_type,
        num_nodes=cfg.num_trainers,
        subnet_id=network.training_subnet_id,
        security_group_id=network.training_sg_id,
        region=cfg.region,
        tags=tags,
        instance_profile_arn=iam.trainer.instance_profile.arn,
        key_arn=storage.key_arn,
        user_data=bucket_names.apply(
            lambda names: trainer_user_data(
                region=cfg.region, buckets=names, instance_type=trainer_type, scratch=scratch_mode
            )
        ),
        market=cfg.trainer_market,
        spot_max_price=cfg.trainer_spot_max_price,
        reservation_target=cfg.reservation_target,
        reservation_preference=cfg.trainer_capacity_reservation_preference or "open",
        placement_group=cfg.use_placement_group,
        ami_id=cfg.trainer_ami,
        ami_parameter=cfg.ami_family.ssm_parameter,
        follow_launch_template=cfg.trainer_follow_launch_template,
        root_volume_gb=cfg.trainer_root_volume_gb,
        scratch_volume_gb=scratch_gb,
        scratch_iops=cfg.trainer_scratch_iops,
        scratch_throughput_mibps=cfg.trainer_scratch_throughput_mibps,
    ),
)
serving = Serving(
    "serving",
    ServingArgs(
        instance_type=server_type,
        vpc_id=network.vpc_id,
        subnet_ids=list(network.private_subnet_ids.values()),
        security_group_id=network.serving_sg_id,
        lb_security_group_id=network.lb_sg_id,
        key_arn=storage.key_arn,
        instance_profile_name=iam.server.instance_profile.name,
        token_parameter_name=token_name,
        tls_cert_parameter_name=tls_cert_name,
        tls_key_parameter_name=tls_key_name,
        organization=qualified,
        models_bucket=buckets["models"].bucket,
        model_name=cfg.model_name,
        port=cfg.serving_port,
        grpc_port=cfg.serving_grpc_port,
        region=cfg.region,
        tags=tags,
        ami_id=cfg.serving_ami,
        root_volume_gb=cfg.serving_root_volume_gb,
        num_hosts=cfg.num_serving,
        max_hosts=cfg.serving_ceiling,
        scale_cpu_percent=cfg.serving_scale_cpu_percent,
        drain_seconds=cfg.serving_drain_seconds,
    ),
)

# In the order of `contract.STACK_OUTPUTS`; bucket outputs are `<purpose>_bucket`.
pulumi.export(contract.OUTPUT_REGION, cfg.region)
pulumi.export(contract.OUTPUT_KMS_KEY_ARN, storage.key_arn)
for purpose in contract.BUCKET_PURPOSES:
    pulumi.export(f"{purpose}_bucket", buckets[purpose].bucket)
# Empty: the nodes are an Auto Scaling group whose members change; the launcher lists them from
# `trainer_autoscaling_group` at launch time.
pulumi.export(contract.OUTPUT_TRAINER_INSTANCE_IDS, [])
pulumi.export(contract.OUTPUT_TRAINER_PRIVATE_IPS, [])
pulumi.export(contract.OUTPUT_TRAINER_SLOTS_PER_NODE, training.slots_per_node)
# null: the serving hosts are an Auto Scaling group behind the load balancer (`serving_url`);
# `serving_autoscaling_group` names the group that lists them.
pulumi.export(contract.OUTPUT_SERVING_INSTANCE_ID, None)
pulumi.export(contract.OUTPUT_SERVING_PRIVATE_IP, None)
pulumi.export(contract.OUTPUT_SERVING_URL, serving.url)
pulumi.export(contract.OUTPUT_SERVING_GRPC_TARGET, serving.grpc_target)
pulumi.export(contract.OUTPUT_SERVING_TOKEN_PARAMETER, serving.token_parameter_name)
# null where the catalog lacks a price and no price key supplies it: a partial sum is no estimate.
pulumi.export(contract.OUTPUT_ESTIMATED_HOURLY_USD, float(estimate.total_usd_per_hour) if estimate.complete else None)
pulumi.export(contract.OUTPUT_TRAINER_AUTOSCALING_GROUP, training.group_name)
pulumi.export(contract.OUTPUT_EGRESS_ENABLED, cfg.egress_enabled)
pulumi.export(contract.OUTPUT_SERVING_CA_CERTIFICATE, serving.ca_certificate_pem)
pulumi.export(contract.OUTPUT_SERVING_TLS_CERT_PARAMETER, serving.tls_cert_parameter_name)
pulumi.export(contract.OUTPUT_SERVING_TLS_KEY_PARAMETER, serving.tls_key_parameter_name)
pulumi.export(contract.OUTPUT_SERVING_AUTOSCALING_GROUP, serving.group_name)
# The launcher prints it and relaunches nothing into a block that is about to end (null without one).
block_end = cfg.capacity_block_end
pulumi.export(contract.OUTPUT_TRAINER_CAPACITY_BLOCK_END, block_end.astimezone(UTC).isoformat() if block_end else None)
