"""stratus CrossGuard rules on the serving endpoint: TLS through the load balancer, the serving
role's SSM parameters. Stack rules: they join listeners to target groups and roles to policies.

"A TLS port" here means a port whose target group health-checks the hosts over HTTPS: the load
balancer itself proves on every check that the hosts answer TLS there. A listener passes TLS
through when it is TCP and every target group it forwards to is TCP with an HTTPS health check;
a TLS or HTTPS listener (one that terminates) must re-encrypt to a TLS or HTTPS target group.
Anything else (HTTP, UDP, TCP to a target group checked over TCP or HTTP) is plaintext.
"""

from __future__ import annotations

import rulekit as k

LISTENER = "aws:lb/listener:Listener"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
PARAMETER = "aws:ssm/parameter:Parameter"
READ_ACTIONS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory", "ssm:GetParametersByPath")
"""The SSM actions that return a parameter's value."""
TERMINATING = ("TLS", "HTTPS")


def _name(resource) -> str:
    return f"{k.short_type(resource.resource_type)} '{resource.name}'"


def _target_groups(listener) -> list:
    return k.depends_on(listener, "defaultActions", TARGET_GROUP)


def _plaintext_reason(listener) -> str | None:
    """Why `listener` carries plaintext to its targets, or None when it does not (or cannot tell yet)."""
    protocol = k.get(listener.props, "protocol")
    if protocol is k.UNKNOWN:
        return None
    groups = _target_groups(listener)
    if not groups:
        return f"it is {protocol} and forwards to no target group of this stack"
    for group in groups:
        group_protocol = k.get(group.props, "protocol")
        health = k.get(group.props, "healthCheck", "protocol")
        if protocol == "TCP" and (group_protocol != "TCP" or health != "HTTPS"):
            return (
                f"it is plain TCP to target group '{group.name}' ({group_protocol}, health check {health}), "
                "not a TLS port"
            )
        if protocol in TERMINATING and group_protocol not in TERMINATING:
            return f"it ends TLS and forwards plaintext ({group_protocol}) to target group '{group.name}'"
        if protocol not in ("TCP", *TERMINATING):
            return f"its protocol {protocol} carries no TLS"
    return None


def listener_tls_through(args, report_violation) -> None:
    """Every load-balancer listener carries TLS to the hosts (pass-through or re-encrypted)."""
    for listener in k.of_type(args.resources, LISTENER):
        reason = _plaintext_reason(listener)
        if reason:
            report_violation(
                f"{_name(listener)} sends plaintext to the hosts: {reason}. Use a TCP listener to a TCP target group "
                "whose health_check has protocol='HTTPS' on the server's TLS port (TLS passed through to the hosts).",
                listener.urn,
            )


def _role_documents(resources, role) -> list:
    return [
        (p, k.document(p.props, "policy"))
        for p in k.of_type(resources, ROLE_POLICY)
        if any(r.urn == role.urn for r in k.depends_on(p, "role", ROLE))
    ]


def _reads(statement) -> bool:
    actions = [a.lower() for a in k.as_list(statement.get("Action")) if isinstance(a, str)]
    return any(a.lower() in actions for a in READ_ACTIONS)


def _own_parameter_problem(resources, role) -> str | None:
    """What lets `role` read SSM parameters beyond those its policy names, or None."""
    docs = _role_documents(resources, role)
    if any(doc is k.UNKNOWN for _, doc in docs):
        return None  # computed from ARNs not known at preview; checked again during the update
    statements = [s for _, doc in docs for s in k.statements(doc)]
    allows = [s for s in statements if s.get("Effect") == "Allow" and _reads(s)]
    if not allows:
        return None  # reads no parameter of its own: not a serving role
    declared = {k.get(p.props, "arn") for p in k.of_type(resources, PARAMETER)} - {None, k.UNKNOWN}
    own = {r for s in allows for r in k.as_list(s.get("Resource"))}
    foreign = sorted(r for r in own if r not in declared)
    if foreign or any("NotResource" in s for s in allows):
        return f"its policy allows reading {foreign or 'NotResource'}, not parameters this stack declares"
    managed = [
        a for a in k.of_type(resources, ATTACHMENT) if any(r.urn == role.urn for r in k.depends_on(a, "role", ROLE))
    ]
    if not managed:
        return None
    # A managed policy (AmazonSSMManagedInstanceCore allows ssm:GetParameter(s) on "*") must be
    # fenced by a Deny of every read outside the role's own parameters.
    fenced = any(
        s.get("Effect") == "Deny"
        and not s.get("Condition")
        and all(a.lower() in [x.lower() for x in k.as_list(s.get("Action"))] for a in READ_ACTIONS)
        and set(k.as_list(s.get("NotResource"))) <= own
        and "NotResource" in s
        for s in statements
    )
    if not fenced:
        return "a managed policy attached to it (SSM core allows ssm:GetParameter on '*') is not fenced"
    return None


def serving_role_own_parameters(args, report_violation) -> None:
    """A role that reads SSM parameters reads only the stack's parameters its policy names."""
    for role in k.of_type(args.resources, ROLE):
        problem = _own_parameter_problem(args.resources, role)
        if problem:
            report_violation(
                f"{_name(role)} can read SSM parameters other than its own: {problem}. Allow ssm:GetParameter on "
                "its parameters' ARNs only and add a Deny of " + ", ".join(READ_ACTIONS) + " with NotResource "
                "set to exactly those ARNs.",
                role.urn,
            )


RULES = [
    (
        "aws-lb-listener-tls-to-targets",
        "Load-balancer listeners carry TLS to the hosts (TCP pass-through to a TLS port, or re-encryption).",
        listener_tls_through,
    ),
    (
        "aws-iam-role-own-ssm-parameters",
        "A role that reads SSM parameters reads only the stack's parameters its policy names.",
        serving_role_own_parameters,
    ),
]
"""(name, description, validate) of each serving rule."""
