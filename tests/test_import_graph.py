"""The package's import graph, read from the source with ``ast`` (every import statement, also those inside
functions): no module imports a module that imports it back, directly or through others; the subpackages
(detector.models, detector.losses, ...) import each other without cycles either; ``detector.runtime`` imports
nothing else of the package; and only ``detector.engine`` itself and the commands (``detector.cli``) import ``detector.engine``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detector"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its ``__init__``)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(source: str, name: str, modules: dict[str, Path]) -> set[str]:
    """The package modules ``source`` (module ``name``) imports: ``from a.b import c`` counts as a.b.c when that
    is a module, else as a.b; relative imports are resolved against ``name``."""
    is_package = modules.get(name, Path()).name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE.name:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm), each sorted."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def subpackage(module: str) -> str:
    """detector.models.heads.base -> detector.models; detector.config -> detector.config."""
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_reader_finds_every_import_form():
    modules = {name: Path(f"{name.replace('.', '/')}.py") for name in
               ("detector.a", "detector.a.b", "detector.a.c", "detector.d")}
    modules["detector.a"] = Path("detector/a/__init__.py")
    source = ("import detector.d\nfrom detector.a import b\nfrom detector.a.c import thing\nimport os\n"
              "def late():\n    from . import c\n    from detector.d import value\n")
    assert imported_modules(source, "detector.a", modules) == {"detector.d", "detector.a.b", "detector.a.c"}
    assert imported_modules("from ..d import x\nfrom . import c\n", "detector.a.b", modules) == \
        {"detector.d", "detector.a.c"}


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_a_module_that_imports_it_back(graph):
    assert len(graph) > 50 and graph["detector.engine.trainer"]  # the reader sees the package
    assert cycles(graph) == []


def test_subpackages_import_each_other_without_cycles(graph):
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(subpackage(module), set()).update(
            subpackage(target) for target in targets if subpackage(target) != subpackage(module))
    assert cycles(packages) == []


def test_runtime_imports_nothing_else_of_the_package(graph):
    runtime = {module: targets for module, targets in graph.items() if subpackage(module) == "detector.runtime"}
    assert "detector.runtime.distributed" in runtime and "detector.runtime.checkpoint" in runtime
    outside = {module: sorted(t for t in targets if subpackage(t) != "detector.runtime")
               for module, targets in runtime.items()}
    assert {module: targets for module, targets in outside.items() if targets} == {}


def test_only_the_engine_and_the_commands_import_the_engine(graph):
    """The engine is the top of the library; only the command-line entry points (detector.cli) sit above it."""
    importers = {module for module, targets in graph.items() for target in targets
                 if subpackage(target) == "detector.engine" and subpackage(module) not in ("detector.engine",
                                                                                          "detector.cli")}
    assert importers == set()
