"""The stratus AWS stack: Pulumi components, pure builders, config, and offline tools.

    infra/components/  one `pulumi.ComponentResource` per file (network, storage, iam, training,
                       serving) plus the AMI lookup and the shared tag/child helpers
    infra/builders/    pure functions: IAM/KMS/bucket policy documents, user data, subnet maths
    infra/config/      the stack config (`StackConfig`), its validation, the instance catalog
                       and the cost estimate
    infra/tools/       offline runs under Pulumi mocks: `python -m infra.tools.plan`

`infra` imports nothing of `runtime` except `runtime.contract`, the names both sides agree on
(tests/infra/test_layout.py checks it).
"""
