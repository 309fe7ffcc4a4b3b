"""The `stratus` console script: the runtime's commands plus `stratus plan` (the stack, offline).

A thin front door above both halves of the project: it imports `runtime.cli` and names
`infra.tools.plan` by module path, so `runtime` and `infra` still never import each other. It is
also where the simulator (the development package `sim/`) meets the runtime: `stratus remote`
(`stratus.remote`) injects `sim.transport.LocalTransport` for `--sim-dir`.
"""
