"""The stack's config, read once and validated, the instance catalog and the cost estimate.

Import order, without cycles: `catalog` and `errors` import nothing of infra; `validate`,
`capacity` and `quota` import both; `stack` (StackConfig) imports `validate` and `capacity`;
`cost` imports `catalog`, `errors` and `stack`.
"""
