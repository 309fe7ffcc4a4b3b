"""The shape of `infra/` (tests/layout.py reads it with `ast`): what it imports, and how big it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.layout import MODULES as ALL_MODULES
from tests.layout import ROOT, cycles, dependencies, imported, oversized

RUNTIME_ALLOWED = "runtime.contract"
MODULES = {name: path for name, path in ALL_MODULES.items() if name.split(".")[0] == "infra"}
"""Every module of `infra`, by dotted name (packages by their own name)."""


def _runtime_imports(name: str, path: Path) -> list[str]:
    return sorted(i for i in imported(name, path) if i == "runtime" or i.startswith("runtime."))


def test_infra_modules_are_found():
    assert {"infra.components.network", "infra.config.stack", "infra.tools.plan"} <= MODULES.keys()


@pytest.mark.parametrize("module", [*MODULES, "__main__"])
def test_only_the_contract_is_imported_from_runtime(module):
    path = MODULES.get(module, ROOT / "__main__.py")
    runtime = _runtime_imports(module, path)
    assert set(runtime) <= {RUNTIME_ALLOWED}, f"{path.relative_to(ROOT)} imports {runtime}; use runtime.contract"


def test_no_import_cycle_among_infra_modules():
    graph = {name: dependencies(name, path) & MODULES.keys() for name, path in MODULES.items()}
    assert graph["infra.config.cost"] >= {"infra.config.catalog", "infra.config.stack"}, "the walker lost imports"
    assert cycles(graph) == []


def test_cycle_finder_reports_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_builders_use_no_pulumi_and_the_catalog_nothing_of_infra():
    for name, path in MODULES.items():
        if name.startswith("infra.builders"):
            pulumi = sorted(i for i in imported(name, path) if i.split(".")[0] in ("pulumi", "pulumi_aws"))
            assert pulumi == [], f"{name} imports {pulumi}; builders are pure functions"
    for name in ("infra.config.catalog", "infra.config.errors"):
        assert dependencies(name, MODULES[name]) & MODULES.keys() == set(), f"{name} must import nothing of infra"


@pytest.mark.parametrize("module", MODULES)
def test_modules_and_functions_stay_small(module):
    assert oversized(MODULES[module]) == []
