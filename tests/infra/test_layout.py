"""The shape of `infra/`, read from the source with `ast`: what it imports, and how big it is.

Every import counts, wherever it is written: at the top, inside a function, or under
`if TYPE_CHECKING:` (a cycle hidden there still ties the modules together for a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
RUNTIME_ALLOWED = "runtime.contract"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(INFRA.rglob("*.py"))}
"""Every module of `infra`, by dotted name (packages by their own name)."""


def _imported(name: str, path: Path) -> set[str]:
    """The most specific name of everything `path` imports: `from a import b` is `a.b` when
    `a.b` is an infra module or `a` is `runtime` (whose modules are not listed here), else `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES or base == "runtime" else base)
    return found


def _dependencies(name: str, path: Path) -> set[str]:
    """Infra modules that importing `name` runs: each imported module and its packages, except
    the packages that contain `name` (Python runs those before `name` itself)."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    deps = set()
    for target in _imported(name, path):
        parts = target.split(".")
        deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
    return deps - own


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that is on a cycle, as the list of modules around it."""
    cycles, done = [], set()
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph[node]):
                if dep == start:
                    cycle = [*path, start]
                    if not set(cycle) <= done:
                        cycles.append(cycle)
                        done |= set(cycle)
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    return cycles


def test_infra_modules_are_found():
    assert {"infra.components.network", "infra.config.stack", "infra.tools.plan"} <= MODULES.keys()


@pytest.mark.parametrize("module", [*MODULES, "__main__"])
def test_only_the_contract_is_imported_from_runtime(module):
    path = MODULES.get(module, ROOT / "__main__.py")
    runtime = sorted(i for i in _imported(module, path) if i == "runtime" or i.startswith("runtime."))
    assert set(runtime) <= {RUNTIME_ALLOWED}, f"{path.relative_to(ROOT)} imports {runtime}; use runtime.contract"


def test_no_import_cycle_among_infra_modules():
    graph = {name: _dependencies(name, path) for name, path in MODULES.items()}
    assert graph["infra.config.cost"] >= {"infra.config.catalog", "infra.config.stack"}, "the walker lost imports"
    assert _cycles(graph) == []


def test_cycle_finder_reports_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_builders_use_no_pulumi_and_the_catalog_nothing_of_infra():
    for name, path in MODULES.items():
        if name.startswith("infra.builders"):
            pulumi = sorted(i for i in _imported(name, path) if i.split(".")[0] in ("pulumi", "pulumi_aws"))
            assert pulumi == [], f"{name} imports {pulumi}; builders are pure functions"
    for name in ("infra.config.catalog", "infra.config.errors"):
        assert _dependencies(name, MODULES[name]) == set(), f"{name} must import nothing of infra"


@pytest.mark.parametrize("module", MODULES)
def test_modules_and_functions_stay_small(module):
    path = MODULES[module]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.relative_to(ROOT)}: split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            assert length <= MAX_FUNCTION_LINES, f"{where} has {length} lines"
