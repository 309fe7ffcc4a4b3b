"""stratus policy pack: `pulumi preview --policy-pack policy` (from the repository root).

The CLI runs this file with `policy/` as the working directory and on `sys.path`, so the rule
modules are imported by their plain names.
"""

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import ALL_POLICIES

PolicyPack(
    name="stratus-security",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=ALL_POLICIES,
)
