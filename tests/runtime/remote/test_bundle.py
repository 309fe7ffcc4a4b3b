"""The runtime bundle of this repository carries the runtime and nothing of the simulator.

The simulated stack (`sim/`: stack, host boot, local transport, simserve) needs root and the moto
emulator of the development requirements; it must never reach a GPU node or the serving host.
"""

from __future__ import annotations

import re
import tarfile

from runtime.remote.bundle import RUNTIME_REQUIREMENTS, bundle_entries, write_bundle
from tests.layout import MODULES, ROOT, imported

SIMULATOR = {name for name in MODULES if name.split(".")[0] == "sim"}
FORMER_PATHS = ("runtime/remote/sim.py", "runtime/remote/simhost.py", "stratus/simserve.py")


def _bundle_files(tmp_path) -> dict[str, bytes]:
    bundle = tmp_path / "bundle.tar.gz"
    write_bundle(bundle_entries(ROOT), bundle)
    with tarfile.open(bundle) as tar:
        return {name: tar.extractfile(name).read() for name in tar.getnames()}


def test_the_simulator_is_a_package_outside_the_runtime():
    assert {"sim.stack", "sim.host", "sim.transport", "sim.serve"} <= SIMULATOR
    assert not (ROOT / "runtime" / "remote" / "sim.py").exists()
    assert not (ROOT / "runtime" / "remote" / "simhost.py").exists()


def test_the_bundle_lists_runtime_files_and_no_simulator_module(tmp_path):
    files = _bundle_files(tmp_path)
    assert "runtime/remote/command.py" in files and RUNTIME_REQUIREMENTS in files
    assert [n for n in files if n != RUNTIME_REQUIREMENTS and not n.startswith("runtime/")] == []
    assert [n for n in files if n.startswith("sim/") or n in FORMER_PATHS] == []
    for name, data in files.items():
        if not name.endswith(".py"):
            continue
        module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        outside = {i for i in imported(module, ROOT / name) if i.split(".")[0] in ("sim", "stratus", "moto")}
        assert outside == set(), f"{name} in the bundle imports {sorted(outside)}"
        assert b"LocalTransport(" not in data, f"{name} builds the simulator's transport"


def test_the_hosts_requirements_have_no_emulator():
    lines = (ROOT / RUNTIME_REQUIREMENTS).read_text().splitlines()
    pins = {re.split(r"[=<>\[ ]", line)[0].lower() for line in lines if line and not line.startswith("#")}
    assert "torch" in pins
    assert pins.isdisjoint({"moto", "pytest", "pulumi"})
