"""The simulated stack: a development and test harness, never shipped to a host.

Training nodes and a serving host as Linux network namespaces on this machine, with an S3/KMS/SSM
emulator (moto server, from requirements/dev.txt); needs root. `scripts/sim-stack.sh` wraps it.

- `sim.stack`: `up DIR` / `down DIR` (namespaces, bridge, emulator, `DIR/outputs.json`, `DIR/sim.json`)
  and the simulated `stratus-prepare.service`;
- `sim.transport`: `LocalTransport`, the `runtime.remote.transport.NodeTransport` of the simulated
  nodes, which the front door (`stratus remote --sim-dir DIR`, `stratus.remote`) injects into the launch;
- `sim.host`: the boot of a simulated host (metadata service, user data, `systemctl` stand-in);
- `sim.serve`: boot the serving host from the user data `infra` renders (`scripts/sim-stack.sh serve`).

Layering: `sim` may import `runtime` and `infra`; neither imports `sim` (tests/test_layout.py), and
the runtime bundle (`runtime.remote.bundle`) and `requirements/runtime.txt` carry none of it.
"""
