"""The package's shape, checked from its imports: dependencies point down, no cycles, no private reach-ins.

ARCHITECTURE.md explains the layers; this test is what keeps them true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnzip"

# Lower numbers sit lower: a unit may import its own layer and the layers below it, never one above.
LAYERS = {
    "errors": 0, "distributed": 0, "layout": 0,
    "models": 1, "data": 1,
    "io": 2, "measure": 2,
    "train": 3,
    "finetune": 4, "methods": 4,
    "prune": 5, "deep": 5, "distill": 5, "deploy": 5, "quantize": 5, "lowrank": 5,  # method families
    "report": 6,
    "search": 7,
    "cli": 8, "__init__": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ("cnnzip", *path.relative_to(SRC).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported cnnzip module, names taken from it) for every import in the module, lazy ones included."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("cnnzip")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("cnnzip"):
                continue
            names = [a.name for a in node.names]
            for n in names:  # `from . import x` imports the module x
                if f"{target}.{n}" in MODULES:
                    out.append((f"{target}.{n}", []))
            rest = [n for n in names if f"{target}.{n}" not in MODULES]
            if rest or not names:
                out.append((target, rest))
    return [(t, n) for t, n in out if t in MODULES]


def _unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(LAYERS), "add the new package to LAYERS and to ARCHITECTURE.md"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    for target, _ in _imports(name):
        assert LAYERS[_unit(target)] <= LAYERS[_unit(name)], f"{name} imports {target}, a layer above it"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_is_imported_across_packages(name):
    for target, names in _imports(name):
        if _unit(target) == _unit(name):
            continue
        private = [p for p in target.split(".")[1:] if p.startswith("_")] + [n for n in names if n.startswith("_")]
        assert not private, f"{name} imports private {private} from {target}"


def test_no_import_cycles():
    graph = {m: {t for t, _ in _imports(m) if t != m} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_check_sees_a_violation(tmp_path):
    """The import parser finds relative, absolute and lazy imports (so the tests above can fail)."""
    imports = dict(_imports("cnnzip.prune.dynamic"))
    assert "cnnzip.io" in imports and "cnnzip.prune.channels" in imports and "cnnzip.finetune" in imports
    assert "cnnzip.deploy" in dict(_imports("cnnzip.cli.export"))  # imported inside a function
    assert "cnnzip.cli.prune" in dict(_imports("cnnzip.cli"))  # `from . import prune`
