"""Instance catalog, where each type is sold, and regional prices.

Prices are AWS public on-demand list prices for Linux, shared tenancy, in USD per hour, as
published on https://aws.amazon.com/ec2/pricing/on-demand/ (EC2), /ebs/pricing/ (gp3),
/vpc/pricing/ (NAT gateway, public IPv4), /privatelink/pricing/ (interface endpoints),
/kms/pricing/ and /s3/pricing/, transcribed 2025-06 (after the June 2025 P4/P5 price
reductions). They could not be re-checked from the build environment (no AWS access): refresh
them before relying on a budget with `python -m infra.tools.prices [REGION...]`, which lists the
current list price of every catalog type in every region that sells it next to the figure here
(and the regions missing here), and bump PRICES_AS_OF when you do.

Where a type is sold is recorded separately from its price (`InstanceType.sold_in`), so the stack
accepts every recorded region even where the catalog holds no price: there the cost estimate
marks the lines it cannot price and names the config key that supplies the price
(`trainer-on-demand-usd-per-hour`, `serving-on-demand-usd-per-hour`; infra/config/cost.py).

Plain data and one lookup: no Pulumi, no network, and nothing else of `infra` (config
validation and the cost estimate both read it).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

PRICES_AS_OF = "2025-06"
HOURS_PER_MONTH = Decimal(730)  # AWS converts monthly prices to hourly with 730 h/month.


@dataclass(frozen=True, kw_only=True)
class InstanceType:
    """One EC2 instance type the stack may launch."""

    name: str
    """EC2 instance type, e.g. `p4d.24xlarge`."""
    gpus: int
    """GPUs per instance (0 for CPU types); also the DeepSpeed slots per training node."""
    gpu_model: str
    """GPU model, empty for CPU types."""
    gpu_memory_gib: int
    """Total GPU memory of the instance in GiB."""
    vcpus: int
    """vCPUs per instance."""
    memory_gib: int
    """Host memory in GiB."""
    network_gbps: float
    """Network bandwidth in Gbit/s ("up to" figures are taken at their peak)."""
    efa_interfaces: int
    """EFA network interfaces the type supports (one per network card); 0: no EFA."""
    usd_per_hour: dict[str, Decimal]
    """On-demand USD/h by region, where the catalog has the price (each of them sells the type)."""
    sold_in: tuple[str, ...] = ()
    """Further regions recorded as selling the type (`SOLD_IN_SOURCE`), priced or not."""
    nvme_disks: int = 0
    """Local NVMe instance-store disks (the nodes stripe them into the scratch volume)."""
    nvme_disk_gb: int = 0
    """Size of each instance-store disk in GB."""
    efa_rdma: bool = False
    """EFA supports RDMA read/write (GPUDirect RDMA: `FI_EFA_USE_DEVICE_RDMA=1`)."""
    efa_only: bool = False
    """The network cards after card 0 take `efa-only` interfaces (the EFA device without an ENA
    device, so no IP address); False: every EFA interface is `efa` and carries an IP."""

    @property
    def ip_interfaces(self) -> int:
        """Interfaces of one node that hold a private IPv4 address of the training subnet."""
        if self.efa_interfaces == 0 or self.efa_only:
            return 1
        return self.efa_interfaces

    @property
    def quota(self) -> tuple[str, str, str, str]:
        """Service Quotas codes and names of the running-instance vCPU quota of the type's family:
        (on-demand code, on-demand name, spot code, spot name), service `ec2`."""
        return QUOTAS[self.name[0] if self.name[0] in QUOTAS else "standard"]

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions recorded as offering this type (priced or not), sorted."""
        return tuple(sorted(set(self.usd_per_hour) | set(self.sold_in)))


def _prices(us_east_1: str, us_west_2: str, eu_west_1: str | None) -> dict[str, Decimal]:
    prices = {"us-east-1": Decimal(us_east_1), "us-west-2": Decimal(us_west_2)}
    if eu_west_1 is not None:
        prices["eu-west-1"] = Decimal(eu_west_1)
    return prices


def _gpu(
    name, gpus, model, gpu_mem, vcpus, mem, gbps, efa, prices, nvme=(0, 0), rdma=False, sold=(), efa_only=False
) -> InstanceType:
    return InstanceType(
        name=name,
        gpus=gpus,
        gpu_model=model,
        gpu_memory_gib=gpu_mem,
        vcpus=vcpus,
        memory_gib=mem,
        network_gbps=gbps,
        efa_interfaces=efa,
        usd_per_hour=prices,
        nvme_disks=nvme[0],
        nvme_disk_gb=nvme[1],
        efa_rdma=rdma,
        sold_in=sold,
        efa_only=efa_only,
    )


def _cpu(name, vcpus, mem, prices, sold=()) -> InstanceType:
    return _gpu(name, 0, "", 0, vcpus, mem, 12.5, 0, prices, sold=sold)


SOLD_IN_SOURCE = (
    "skypilot-org/skypilot-catalog, catalogs/v7/aws/vms.csv at commit 001367d22a00 (generated from "
    "EC2 DescribeInstanceTypeOfferings over the regions that catalog crawls)"
)
"""Where the `sold_in` lists come from. The lists are a lower bound: AWS adds regions, and that
crawl skips some opt-in regions. A type sold in a region missing here: add the region to its list
after checking `aws ec2 describe-instance-type-offerings --region R --filters
Name=instance-type,Values=TYPE` (the live zone lookup at preview makes the same check)."""
_P5_SOLD = (
    "ap-northeast-1",
    "ap-south-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-north-1",
    "eu-west-2",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
)
_P4D_SOLD = (
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-south-1",
    "ap-southeast-2",
    "eu-central-1",
    "eu-west-1",
    "us-east-1",
    "us-east-2",
    "us-west-2",
)
# The same source lists c7i.xlarge and m7i.xlarge in every p4d/p5 region above, c7i.2xlarge in
# all but ap-northeast-1/2 (not confirmed there). The g5/g6/g6e types and m7i.2xlarge are
# recorded only where the catalog prices them.
_C7I_XLARGE_SOLD = tuple(sorted(set(_P5_SOLD) | set(_P4D_SOLD)))
_M7I_XLARGE_SOLD = _C7I_XLARGE_SOLD
_C7I_2XLARGE_SOLD = tuple(r for r in _C7I_XLARGE_SOLD if not r.startswith("ap-northeast-"))


QUOTAS = {
    "p": ("L-417A185B", "Running On-Demand P instances", "L-7212CCBC", "All P Spot Instance Requests"),
    "g": ("L-DB2E81BA", "Running On-Demand G and VT instances", "L-3819A6DF", "All G and VT Spot Instance Requests"),
    "standard": (
        "L-1216C47A",
        "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        "L-34B43A08",
        "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
    ),
}
"""EC2 vCPU quotas by instance family (Service Quotas, service code `ec2`)."""


# EFA interface counts follow the EC2 user guide table "Supported instance types" for EFA:
# g5.48xlarge and g6e.12xlarge have one EFA-capable card, p4d/g6e.48xlarge four, p5 thirty-two;
# p4d and p5 also support RDMA over EFA. `efa_only`: the EC2 user guide ("Maximize network
# bandwidth on Amazon EC2 instances with multiple network cards") recommends `efa-only` interfaces
# (EFA without ENA, no IP address) on every further network card of the EFA types that have
# several, and EC2 offers the interface type on every EFA-capable type (announced 2024-10-28);
# its P5 configuration puts an `efa` interface on card 0 and `efa-only` on cards 1-31. So a
# p5, p4d or g6e.48xlarge node takes one subnet address instead of one per card. NVMe counts
# and sizes: EC2 user guide, "Instance store volume limits" (the local disks the training nodes
# stripe into /scratch).
_CATALOG = [
    _gpu("g5.xlarge", 1, "A10G", 24, 4, 16, 10, 0, _prices("1.006", "1.006", "1.123"), nvme=(1, 250)),
    _gpu("g5.2xlarge", 1, "A10G", 24, 8, 32, 10, 0, _prices("1.212", "1.212", "1.353"), nvme=(1, 450)),
    _gpu("g5.12xlarge", 4, "A10G", 96, 48, 192, 40, 0, _prices("5.672", "5.672", "6.332"), nvme=(1, 3800)),
    _gpu("g5.48xlarge", 8, "A10G", 192, 192, 768, 100, 1, _prices("16.288", "16.288", "18.184"), nvme=(2, 3800)),
    _gpu("g6.xlarge", 1, "L4", 24, 4, 16, 10, 0, _prices("0.8048", "0.8048", None), nvme=(1, 250)),
    _gpu("g6.12xlarge", 4, "L4", 96, 48, 192, 40, 0, _prices("4.6016", "4.6016", None), nvme=(4, 940)),
    _gpu("g6e.xlarge", 1, "L40S", 48, 4, 32, 20, 0, _prices("1.861", "1.861", None), nvme=(1, 250)),
    _gpu("g6e.12xlarge", 4, "L40S", 192, 48, 384, 100, 1, _prices("10.493", "10.493", None), nvme=(2, 1900)),
    _gpu(
        "g6e.48xlarge",
        8,
        "L40S",
        384,
        192,
        1536,
        400,
        4,
        _prices("30.131", "30.131", None),
        nvme=(4, 1900),
        efa_only=True,
    ),
    _gpu(
        "p4d.24xlarge",
        8,
        "A100",
        320,
        96,
        1152,
        400,
        4,
        _prices("21.96", "21.96", "23.72"),
        nvme=(8, 1000),
        rdma=True,
        sold=_P4D_SOLD,
        efa_only=True,
    ),
    _gpu(
        "p5.48xlarge",
        8,
        "H100",
        640,
        192,
        2048,
        3200,
        32,
        _prices("55.04", "55.04", None),
        nvme=(8, 3840),
        rdma=True,
        sold=_P5_SOLD,
        efa_only=True,
    ),
    _cpu("c7i.xlarge", 4, 8, _prices("0.1785", "0.1785", "0.1995"), sold=_C7I_XLARGE_SOLD),
    _cpu("c7i.2xlarge", 8, 16, _prices("0.357", "0.357", "0.399"), sold=_C7I_2XLARGE_SOLD),
    _cpu("m7i.xlarge", 4, 16, _prices("0.2016", "0.2016", "0.2226"), sold=_M7I_XLARGE_SOLD),
    _cpu("m7i.2xlarge", 8, 32, _prices("0.4032", "0.4032", "0.4452")),
]
CATALOG: dict[str, InstanceType] = {t.name: t for t in _CATALOG}
"""Every instance type the stack allows, by name."""


@dataclass(frozen=True, kw_only=True)
class RegionPrices:
    """Non-instance prices of one region, USD."""

    gp3_gb_month: Decimal
    """EBS gp3 storage per GB-month (baseline IOPS/throughput, which are free)."""
    gp3_iops_month: Decimal
    """gp3 provisioned IOPS above 3000, per IOPS-month."""
    gp3_mibps_month: Decimal
    """gp3 provisioned throughput above 125 MiB/s, per MiB/s-month."""
    s3_standard_gb_month: Decimal
    """S3 Standard storage per GB-month, first 50 TB tier."""
    nat_gateway_hour: Decimal
    """NAT gateway per hour (data processing per GB is usage-dependent and left out)."""
    public_ipv4_hour: Decimal
    """Public IPv4 address per hour (the NAT gateway's Elastic IP)."""
    interface_endpoint_az_hour: Decimal
    """Interface VPC endpoint per AZ per hour."""
    kms_key_month: Decimal
    """Customer-managed KMS key per month (requests are usage-dependent and left out)."""
    nlb_hour: Decimal
    """Network Load Balancer per hour (its capacity units, NLCU, are usage-dependent and left out)."""


REGION_PRICES: dict[str, RegionPrices] = {
    "us-east-1": RegionPrices(
        gp3_gb_month=Decimal("0.08"),
        gp3_iops_month=Decimal("0.005"),
        gp3_mibps_month=Decimal("0.04"),
        s3_standard_gb_month=Decimal("0.023"),
        nat_gateway_hour=Decimal("0.045"),
        public_ipv4_hour=Decimal("0.005"),
        interface_endpoint_az_hour=Decimal("0.01"),
        kms_key_month=Decimal("1"),
        nlb_hour=Decimal("0.0225"),
    ),
    "us-west-2": RegionPrices(
        gp3_gb_month=Decimal("0.08"),
        gp3_iops_month=Decimal("0.005"),
        gp3_mibps_month=Decimal("0.04"),
        s3_standard_gb_month=Decimal("0.023"),
        nat_gateway_hour=Decimal("0.045"),
        public_ipv4_hour=Decimal("0.005"),
        interface_endpoint_az_hour=Decimal("0.01"),
        kms_key_month=Decimal("1"),
        nlb_hour=Decimal("0.0225"),
    ),
    "eu-west-1": RegionPrices(
        gp3_gb_month=Decimal("0.088"),
        gp3_iops_month=Decimal("0.0055"),
        gp3_mibps_month=Decimal("0.044"),
        s3_standard_gb_month=Decimal("0.023"),
        nat_gateway_hour=Decimal("0.048"),
        public_ipv4_hour=Decimal("0.005"),
        interface_endpoint_az_hour=Decimal("0.011"),
        kms_key_month=Decimal("1"),
        nlb_hour=Decimal("0.0252"),
    ),
}
"""Non-instance prices of the regions the catalog has them for; elsewhere the estimate marks
those lines unpriced."""


@dataclass(frozen=True, kw_only=True)
class AmiFamily:
    """A family of AWS Deep Learning AMIs (x86_64, Amazon Linux 2023) that AWS keeps current."""

    name: str
    """The value of `trainer-ami-framework`, e.g. `pytorch-2.13`."""
    ami_type: str
    """The `$ami_type` of the family's SSM public parameter (the AMI's name without "Deep",
    "Learning" and "AMI", as AWS's DLAMI guide "Finding the ID of a DLAMI" spells it)."""
    image_name: str
    """EC2 name pattern of the family's images (`scripts/plan.sh --update-ami`)."""
    torch: str | None
    """PyTorch version the AMI carries in /opt/pytorch (its release notes' `framework_version`);
    None: no framework (the runtime bundle brings torch)."""

    @property
    def ssm_parameter(self) -> str:
        """The SSM public parameter holding the id of the family's newest image in each region."""
        return f"/aws/service/deeplearning/ami/x86_64/{self.ami_type}/latest/ami-id"


def _pytorch(version: str) -> AmiFamily:
    return AmiFamily(
        name=f"pytorch-{version}",
        ami_type=f"oss-nvidia-driver-gpu-pytorch-{version}-amazon-linux-2023",
        image_name=f"Deep Learning OSS Nvidia Driver AMI GPU PyTorch {version}* (Amazon Linux 2023) *",
        torch=version,
    )


# The versions are those whose AL2023 release notes AWS's DLAMI guide lists (2.10, 2.11, 2.13 as
# of 2026-10); add one here when AWS publishes it. The runtime pins torch in
# requirements/runtime.txt; DEFAULT_AMI_FAMILY carries the same minor version (a test checks it),
# so the nodes can reuse the AMI's torch instead of installing their own.
AMI_FAMILIES: dict[str, AmiFamily] = {
    f.name: f
    for f in (
        _pytorch("2.10"),
        _pytorch("2.11"),
        _pytorch("2.13"),
        AmiFamily(
            name="base",
            ami_type="base-oss-nvidia-driver-gpu-amazon-linux-2023",
            image_name="Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) *",
            torch=None,
        ),
    )
}
"""Deep Learning AMI families a training node may boot (`trainer-ami-framework`)."""
DEFAULT_AMI_FAMILY = "pytorch-2.13"


REGIONS: tuple[str, ...] = tuple(sorted({r for t in CATALOG.values() if t.gpus for r in t.regions}))
"""Regions the stack accepts: every region recorded as selling one of the catalog's GPU types."""


def offering_regions(instance_type: str) -> tuple[str, ...]:
    """Return the regions recorded as offering `instance_type` (empty when it is unknown)."""
    entry = CATALOG.get(instance_type)
    return entry.regions if entry else ()


def on_demand_usd_per_hour(instance_type: str, region: str) -> Decimal | None:
    """The catalog's on-demand price of `instance_type` in `region`, or None where it has none."""
    return CATALOG[instance_type].usd_per_hour.get(region)
