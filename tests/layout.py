"""The repository's shape, read from the source with `ast`: modules, what they import, cycles.

Every import counts, wherever it is written: at the top, inside a function, or under
`if TYPE_CHECKING:` (a cycle hidden there still ties the modules together for a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "infra", "stratus", "sim")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
"""Every module of the project's packages, by dotted name (packages by their own name)."""


def imported(name: str, path: Path) -> set[str]:
    """The most specific name of everything `path` imports: `from a import b` is `a.b` when `a.b`
    is a project module, else `a`."""
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
                found.add(sub if sub in MODULES else base)
    return found


def dependencies(name: str, path: Path) -> set[str]:
    """Project modules that importing `name` runs: each imported module and its packages, except
    the packages that contain `name` (Python runs those before `name` itself)."""
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    deps = set()
    for target in imported(name, path):
        parts = target.split(".")
        deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
    return deps - own


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each node that is on a cycle, as the list of nodes around it."""
    found, done = [], set()
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph.get(node, ())):
                if dep == start:
                    cycle = [*path, start]
                    if not set(cycle) <= done:
                        found.append(cycle)
                        done |= set(cycle)
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    return found


def oversized(path: Path) -> list[str]:
    """What makes `path` too big: the file past MAX_FILE_LINES, functions past MAX_FUNCTION_LINES."""
    text = path.read_text()
    problems = []
    if len(text.splitlines()) > MAX_FILE_LINES:
        problems.append(f"{path} has {len(text.splitlines())} lines; split it")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{path}:{node.lineno} {node.name} has {length} lines")
    return problems
