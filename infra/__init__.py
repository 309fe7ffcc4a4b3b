"""The stratus AWS stack: Pulumi components, pure builders, config, and offline tools.

    infra/components/  one `pulumi.ComponentResource` per file (network, storage, iam, training,
                       serving) plus the AMI lookup and the shared tag/child helpers
    infra/builders/    pure functions: IAM/KMS/bucket policy documents, user data, subnet maths;
                       host/ holds the bash the hosts run (prepare.sh, scratch.sh)
    infra/config/      the stack config (`StackConfig`), its validation (capacity too), the
                       instance catalog, the vCPU quota needs and the cost estimate
    infra/tools/       offline runs under Pulumi mocks: `python -m infra.tools.plan`; with AWS
                       credentials `infra.tools.ami` (pin AMIs) and `infra.tools.prices`

`infra` imports nothing of `runtime` except `runtime.contract`, the names both sides agree on
(tests/infra/test_layout.py checks it).
"""
