"""The layout rules of the core (see README "Architecture"), checked from the source.

* no import cycle among the modules of ``onnxcomp/`` and ``passes/`` (imports inside
  functions count too: a lazy import only hides a cycle; ``if TYPE_CHECKING`` ones don't);
* no name with a leading underscore imported from another module;
* ``passes/`` imports only the public namespaces a third-party pass may use, and only
  names those namespaces export in ``__all__``;
* no module over 500 lines.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What a pass (built-in or third-party) may import from onnxcomp.
PUBLIC_FOR_PASSES = {
    "onnxcomp",
    "onnxcomp.errors",
    "onnxcomp.ir",
    "onnxcomp.checking",
    "onnxcomp.pruning",
    "onnxcomp.quantization",
    "onnxcomp.recovery",
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for base, package in ((ROOT / "onnxcomp", "onnxcomp"), (ROOT / "passes", "onnxcomp.passes")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) of every onnxcomp import in ``path``."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("onnxcomp"):
                    found.append((target, [a.name for a in child.names], child.lineno))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("onnxcomp"):
                        found.append((a.name, [], child.lineno))
            visit(child)

    visit(tree)
    return found


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, _ in _imports(module, path):
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
            # `from onnxcomp.io import safety` depends on the submodule, not on what the
            # package's __init__ re-exports.
            graph[module].update(submodules)
            if target in MODULES and target != module and len(submodules) < max(len(names), 1):
                graph[module].add(target)
    return graph


def test_no_import_cycles() -> None:
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm (recursion depth ~ module count)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_imported_across_modules() -> None:
    bad = []
    for module, path in MODULES.items():
        for target, names, line in _imports(module, path):
            for name in names:
                if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {target}")
    assert not bad, "\n".join(bad)


def test_passes_use_only_the_public_api() -> None:
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("onnxcomp.passes") or module == "onnxcomp.passes":
            continue
        for target, names, line in _imports(module, path):
            if target not in PUBLIC_FOR_PASSES:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports non-public module {target}")
                continue
            exported = set(getattr(importlib.import_module(target), "__all__", ()))
            if target == "onnxcomp.errors":
                exported = {n for n in vars(importlib.import_module(target)) if not n.startswith("_")}
            for name in names:
                if name not in exported:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} from {target}, which does not export it")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 500, f"{module} has {lines} lines: split it by what its parts do"


#: Packages of onnxcomp from the bottom up: a package may import its own layer and those
#: below, never one above (``errors`` and ``_version`` are available to all).
LAYERS = [
    {"io"},
    {"ir"},
    {"checking"},
    {"pruning", "quantization", "recovery", "perf", "pipeline"},
    {"api"},
    {"tune"},
    {"cli"},
]


def test_packages_import_only_their_layer_and_below() -> None:
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    bad = []
    for module, path in MODULES.items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in layer_of:
            continue  # the package root, errors, _version, __main__, the passes
        for target, _, line in _imports(module, path):
            tparts = target.split(".")
            if len(tparts) > 1 and tparts[1] in layer_of and layer_of[tparts[1]] > layer_of[parts[1]]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({parts[1]}) imports {target} from a higher layer")
    assert not bad, "\n".join(bad)
