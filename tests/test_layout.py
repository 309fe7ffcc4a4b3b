"""The repository's shape (docs/architecture.md, "Folder map"): packages per stage, where `runtime`
and `infra` meet, the simulator (`sim`) kept out of both, no import cycle, small files and
functions, tests importable as packages."""

from __future__ import annotations

import ast
import re

import pytest

from tests.layout import MODULES, ROOT, cycles, dependencies, imported, oversized

RUNTIME = {name: path for name, path in MODULES.items() if name.split(".")[0] == "runtime"}
STAGES = ("common", "checkpoint", "train", "export", "repository", "serve", "remote")
LIBRARIES = ("common", "checkpoint")
"""Stages without a command of their own: the code other stages share."""
FAMILY_REGISTRIES = ("runtime.train.families", "runtime.export.families")
"""Model families: the training half of each in the first (the registry), the export half in the second."""
MODEL_KIND_TEST = re.compile(r"\bkind\s*[=!]=|\bmetric_name\s*[=!]=")
"""A stage branching on the model family."""


def _project_imports(name: str) -> set[str]:
    return {i for i in imported(name, MODULES[name]) if i.split(".")[0] in ("runtime", "infra", "stratus", "sim")}


def test_every_stage_is_a_package_with_a_command_module():
    for stage in STAGES:
        assert f"runtime.{stage}" in MODULES, f"runtime/{stage}/__init__.py is missing"
        if stage not in LIBRARIES:
            assert f"runtime.{stage}.command" in MODULES, f"runtime/{stage}/command.py is missing"


def test_no_import_cycle_in_the_repository():
    graph = {name: dependencies(name, path) for name, path in MODULES.items()}
    assert "runtime.contract" in graph["infra.builders.userdata"], "the walker lost imports"
    assert cycles(graph) == []


def _stage_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in RUNTIME.items():
        stage = ".".join(name.split(".")[:2])
        graph.setdefault(stage, set()).update(
            ".".join(dep.split(".")[:2]) for dep in dependencies(name, path) if dep.startswith("runtime.")
        )
    for stage in graph:
        graph[stage].discard(stage)
    return graph


def test_no_cycle_between_stages():
    """Stages depend one way: common <- checkpoint <- train <- export -> repository <- serve;
    checkpoint, train <- remote."""
    graph = _stage_graph()
    assert "runtime.train" in graph["runtime.export"] and "runtime.repository" in graph["runtime.serve"]
    assert cycles(graph) == []


def test_the_checkpoint_package_sits_between_common_and_the_stages_that_use_it():
    graph = _stage_graph()
    assert graph["runtime.checkpoint"] <= {"runtime.common", "runtime.contract"}, graph["runtime.checkpoint"]
    assert "runtime.checkpoint" not in graph["runtime.common"]
    for user in ("runtime.train", "runtime.export", "runtime.remote"):
        assert "runtime.checkpoint" in graph[user], f"{user} no longer uses runtime.checkpoint"


def test_no_module_rebuilds_a_runs_checkpoints_uri():
    """`s3://<checkpoints bucket>/<run>/` is spelled once: `runtime.contract.checkpoints_uri`."""
    by_hand = re.compile(r"""s3://\{[^}]*checkpoints_bucket[^}]*\}/\{""")
    for name, path in MODULES.items():
        if name != "runtime.contract":
            assert not by_hand.search(path.read_text()), f"{name} builds a checkpoints URI by hand"


def test_model_families_are_reached_only_through_their_registries():
    """A family is one module in each registry package (training half below export, export half in
    export: the stage order above keeps the training half from importing export). Everything else
    imports the registry (and its `spec`), never one family's module, and tests no `model.kind`."""
    assert {f"{r}.{family}" for r in FAMILY_REGISTRIES for family in ("mlp", "gpt")} <= RUNTIME.keys()
    for name, path in RUNTIME.items():
        home = next((r for r in FAMILY_REGISTRIES if name == r or name.startswith(f"{r}.")), None)
        for dep in dependencies(name, path):
            registry = next((r for r in FAMILY_REGISTRIES if dep.startswith(f"{r}.")), None)
            if registry and dep != f"{registry}.spec":
                assert home == registry, f"{name} imports {dep}; go through the registry {registry}"
        found = MODEL_KIND_TEST.search(path.read_text())
        assert not found, f"{name} tests `{found and found.group()}`; ask the model family (runtime.train.families)"


@pytest.mark.parametrize("module", sorted(RUNTIME))
def test_runtime_never_imports_infra_or_the_front_door(module):
    outside = sorted(i for i in _project_imports(module) if i.split(".")[0] != "runtime")
    assert outside == [], f"{module} imports {outside}; runtime and infra meet only in runtime.contract"


@pytest.mark.parametrize("module", sorted(n for n in MODULES if n.split(".")[0] in ("runtime", "infra")))
def test_only_the_front_door_and_tests_import_the_simulator(module):
    """`sim` (root, network namespaces, the moto emulator) is a development package: the runtime,
    which the bundle ships to every host, and the stack never import it; `stratus` injects it."""
    found = sorted(i for i in imported(module, MODULES[module]) if i.split(".")[0] == "sim")
    assert found == [], f"{module} imports the simulator {found}; inject it from `stratus` instead"


def test_the_simulator_is_injected_by_the_front_door():
    assert "sim.transport" in dependencies("stratus.remote", MODULES["stratus.remote"])
    assert not any(
        i.split(".")[0] == "sim" for i in imported("runtime.remote.command", MODULES["runtime.remote.command"])
    )


def test_the_contract_imports_nothing_of_the_project():
    assert _project_imports("runtime.contract") == set()


def _python_files():
    for folder in ("runtime", "infra", "stratus", "sim", "policy", "bench", "tests"):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield ROOT / "__main__.py"


@pytest.mark.parametrize("path", list(_python_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_small(path):
    assert oversized(path) == []


def test_tests_are_packages_without_sys_path_edits():
    for folder in [ROOT / "tests", *(p for p in (ROOT / "tests").rglob("*") if p.is_dir())]:
        if folder.name != "__pycache__" and any(folder.glob("test_*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} edits sys.path; import through the packages")


def test_the_folder_map_names_every_module():
    """docs/architecture.md's folder map is the reader's index: a new module gets its row entry."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    folder_map = text[text.index("## Folder map") :]
    unnamed = []
    for package in ("runtime", "sim", "stratus"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if path.stem in ("__init__", "__main__") or relative in folder_map:
                continue
            if not re.search(rf"`{path.stem}[`( ]", folder_map):
                unnamed.append(relative)
    assert unnamed == [], f"docs/architecture.md's folder map does not name {unnamed}"
