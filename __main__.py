"""stratus Pulumi program: a secure GPU training and serving stack on AWS.

    cp Pulumi.example.yaml Pulumi.dev.yaml && pulumi stack init dev
    pulumi preview --policy-pack policy    # config errors and the budget guard fail here
    pulumi up
    ./scripts/plan.sh Pulumi.dev.yaml      # offline: resources, policy verdicts, cost

Reads the config once, builds one component per concern, exports the outputs that
`scripts/launch.sh --stack` relies on (names fixed in ARCHITECTURE.md).
"""

import pulumi
import pulumi_aws as aws

from infra import policies, pricing
from infra.common import base_tags
from infra.config import load_config
from infra.iam import Iam, IamArgs
from infra.netplan import lookup_zones
from infra.network import Network, NetworkArgs
from infra.serving import Serving, ServingArgs
from infra.storage import Storage, StorageArgs
from infra.training import Training, TrainingArgs
from infra.userdata import trainer_user_data

cfg = load_config()
estimate = pricing.estimate_cost(cfg)
pricing.enforce_budget(estimate, cfg.max_hourly_usd)
pulumi.log.info("estimated cost:\n" + estimate.table())

account_id = aws.get_caller_identity().account_id
partition = aws.get_partition().partition
project, stack, tags = pulumi.get_project(), pulumi.get_stack(), base_tags()
trainer_type = pricing.CATALOG[cfg.trainer_instance_type]
server_type = pricing.CATALOG[cfg.serving_instance_type]
zones = lookup_zones(
    cfg.region,
    cfg.num_availability_zones,
    cfg.training_availability_zone,
    [trainer_type.name, server_type.name],
    cfg.zone_offerings_lookup,
)

storage = Storage("storage", StorageArgs(
    account_id=account_id, partition=partition, region=cfg.region, tags=tags,
    name_prefix=f"{project}-{stack}", kms_deletion_window_days=cfg.kms_deletion_window_days,
    checkpoint_noncurrent_days=cfg.checkpoint_noncurrent_days,
    logs_expiration_days=cfg.logs_expiration_days, force_destroy=cfg.force_destroy_buckets,
))  # fmt: skip
buckets = storage.buckets
network = Network("network", NetworkArgs(
    vpc_cidr=cfg.vpc_cidr, zones=zones, region=cfg.region, serving_port=cfg.serving_port,
    serving_allowed_cidrs=cfg.serving_allowed_cidrs, flow_log_bucket_arn=buckets["logs"].arn,
    tags=tags, egress_enabled=cfg.egress_enabled, interface_endpoints=cfg.interface_endpoints,
    flow_log_depends_on=[storage],
))  # fmt: skip
token_name = policies.token_parameter_name(project, stack)
iam = Iam("iam", IamArgs(
    bucket_arns={purpose: bucket.arn for purpose, bucket in buckets.items()},
    key_arn=storage.key_arn, region=cfg.region, partition=partition, tags=tags,
    token_parameter_arn=policies.token_parameter_arn(
        partition=partition, region=cfg.region, account_id=account_id, name=token_name),
))  # fmt: skip
bucket_names = pulumi.Output.all(**{p: b.bucket for p, b in buckets.items()})
training = Training("training", TrainingArgs(
    instance_type=trainer_type, num_nodes=cfg.num_trainers, subnet_id=network.training_subnet_id,
    security_group_id=network.training_sg_id, region=cfg.region, tags=tags,
    instance_profile_arn=iam.trainer.instance_profile.arn, key_arn=storage.key_arn,
    user_data=bucket_names.apply(lambda names: trainer_user_data(
        region=cfg.region, buckets=names, scratch=cfg.trainer_scratch_volume_gb > 0)),
    spot_max_price=cfg.trainer_spot_max_price, ami_id=cfg.trainer_ami,
    root_volume_gb=cfg.trainer_root_volume_gb, scratch_volume_gb=cfg.trainer_scratch_volume_gb,
))  # fmt: skip
serving = Serving("serving", ServingArgs(
    instance_type=server_type, subnet_id=network.training_subnet_id,
    security_group_id=network.serving_sg_id, key_arn=storage.key_arn,
    instance_profile_name=iam.server.instance_profile.name, token_parameter_name=token_name,
    models_bucket=buckets["models"].bucket, model_name=cfg.model_name, port=cfg.serving_port,
    region=cfg.region, tags=tags, ami_id=cfg.serving_ami, root_volume_gb=cfg.serving_root_volume_gb,
))  # fmt: skip

pulumi.export("region", cfg.region)
pulumi.export("kms_key_arn", storage.key_arn)
for purpose, bucket in buckets.items():
    pulumi.export(f"{purpose}_bucket", bucket.bucket)
pulumi.export("trainer_instance_ids", training.instance_ids)
pulumi.export("trainer_private_ips", training.private_ips)
pulumi.export("trainer_slots_per_node", training.slots_per_node)
pulumi.export("serving_instance_id", serving.instance_id)
pulumi.export("serving_private_ip", serving.private_ip)
pulumi.export("serving_url", serving.url)
pulumi.export("serving_token_parameter", serving.token_parameter_name)
pulumi.export("estimated_hourly_usd", float(estimate.total_usd_per_hour))
