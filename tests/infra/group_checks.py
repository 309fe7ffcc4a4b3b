"""Checks of the Auto Scaling groups (re-exported by `tests.infra.checks`): serving hosts behind
the load balancer, training nodes that replace themselves."""

from __future__ import annotations

from infra.tools.offline import ProgramRun, Registered

ASG = "aws:autoscaling/group:Group"
INSTANCE = "aws:ec2/instance:Instance"
LT = "aws:ec2/launchTemplate:LaunchTemplate"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"


def _component(resource: Registered) -> str | None:
    return {t["key"]: t["value"] for t in resource.inputs.get("tags", [])}.get("component")


def hosts_behind_the_load_balancer(run: ProgramRun) -> list[str]:
    """Serving groups register in target groups, replace unhealthy hosts and roll launch-template
    changes (rolling refresh keeping every host in service); target groups drain leaving hosts."""
    violations = []
    for group in run.of_type(ASG):
        if _component(group) != "serving":
            continue
        refresh = group.inputs.get("instanceRefresh") or {}
        preferences = refresh.get("preferences") or {}
        if not group.inputs.get("targetGroupArns") or group.inputs.get("healthCheckType") != "ELB":
            violations.append(f"{group.urn}: hosts not registered in target groups with ELB health checks")
        if refresh.get("strategy") != "Rolling" or preferences.get("minHealthyPercentage", 90) < 100:
            violations.append(f"{group.urn}: no rolling instance refresh keeping every host in service")
    for target_group in run.of_type(TARGET_GROUP):
        if not target_group.inputs.get("deregistrationDelay"):
            violations.append(f"{target_group.urn}: no deregistration delay for requests in flight")
    return violations


def training_nodes_self_heal(run: ProgramRun) -> list[str]:
    """The training nodes are one Auto Scaling group of a fixed size (minimum = maximum = desired)
    that replaces a failed instance (EC2 health checks) from a launch template of this stack, in
    one subnet; no standalone instances."""
    violations = [f"{i.urn}: a standalone instance (not replaced when it fails)" for i in run.of_type(INSTANCE)]
    groups = [g for g in run.of_type(ASG) if _component(g) == "training"]
    for lt in run.of_type(LT):
        launched_by = [g for g in groups if lt.urn in g.property_dependencies.get("launchTemplate", [])]
        if lt.inputs.get("tags", {}).get("component") == "training" and len(launched_by) != 1:
            violations.append(f"{lt.urn}: {len(launched_by)} Auto Scaling groups launch the training nodes from it")
    for group in groups:
        i = group.inputs
        if not i.get("minSize") == i.get("maxSize") == i.get("desiredCapacity") or not i.get("minSize"):
            size = f"{i.get('minSize')}-{i.get('maxSize')}, desired {i.get('desiredCapacity')}"
            violations.append(f"{group.urn}: not a fixed size ({size})")
        if i.get("healthCheckType") != "EC2":
            violations.append(f"{group.urn}: health check {i.get('healthCheckType')!r}, not EC2")
        if "launchConfiguration" in i or "mixedInstancesPolicy" in i:
            violations.append(f"{group.urn}: launches from something other than the stack's launch template")
        if len(i.get("vpcZoneIdentifiers", [])) != 1:
            violations.append(
                f"{group.urn}: spans {len(i.get('vpcZoneIdentifiers', []))} subnets, not the training one"
            )
    return violations
