"""The package layout is the architecture: imports run one way between layers, and no circle.

Reads every module's imports with ``ast`` (type-only and function-level imports included: a
circle through a lazy import is still a circle in the design) and names the offending import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "daemon" / "cdrsync"

# Highest first. A module may import its own layer or any layer below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("cdrsync.cli", "cdrsync.__main__")),
    ("simulator", ("cdrsync.simulator",)),
    ("app", ("cdrsync.app",)),
    ("ops", ("cdrsync.ops",)),
    ("engine", ("cdrsync.engine",)),
    ("vendors", ("cdrsync.vendors",)),
    ("http", ("cdrsync.http",)),
    ("store", ("cdrsync.store",)),
    ("config", ("cdrsync.config", "cdrsync.settings_types")),
    ("base", ("cdrsync.model", "cdrsync.errors", "cdrsync.jsontext", "cdrsync")),
]
RANK = {name: len(LAYERS) - index for index, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to (the longest matching prefix)."""
    best = ""
    found = "base"
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > len(best):
                best, found = prefix, name
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) of every cdrsync module that ``path`` imports, resolved to a module file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from cdrsync.app import daemon" imports the module cdrsync.app.daemon.
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in modules
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] == "cdrsync"]
    return found


def graph() -> dict[str, list[tuple[int, str]]]:
    modules = known_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("cdrsync.cli", "cli"),
        ("cdrsync.simulator.demo", "simulator"),
        ("cdrsync.app.daemon", "app"),
        ("cdrsync.engine.window", "engine"),
        ("cdrsync.store.store", "store"),
        ("cdrsync.settings_types", "config"),
        ("cdrsync.model", "base"),
        ("cdrsync", "base"),
    ],
)
def test_layer_of_names_the_longest_matching_prefix(module: str, layer: str) -> None:
    """A module's layer is decided by its most specific prefix, the package root being base."""
    assert layer_of(module) == layer


def test_imports_run_one_way_between_layers() -> None:
    """No module imports from a layer above its own (app -> engine -> vendors -> http -> ...)."""
    offences = []
    for module, imports in graph().items():
        own = RANK[layer_of(module)]
        for line, target in imports:
            if RANK[layer_of(target)] > own:
                offences.append(
                    f"{module} (layer {layer_of(module)}) line {line} imports {target} "
                    f"(layer {layer_of(target)}, above it)"
                )
    assert not offences, "imports against the layer order:\n" + "\n".join(offences)


def test_every_module_has_a_layer_and_every_layer_a_module() -> None:
    """Each layer of the table holds a module, so the table cannot drift from the tree."""
    used = {layer_of(module) for module in known_modules()}
    assert used == set(RANK)


def test_no_import_circle_between_modules() -> None:
    """No module reaches itself through imports (a package's __init__ importing its own
    submodules lazily, as a registry does, is not a circle unless a submodule imports it back)."""
    edges = {
        module: {target for _, target in imports if target != module}
        for module, imports in graph().items()
    }
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target in edges and target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)
