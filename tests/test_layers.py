"""The import rules of the package (README: Architecture), read from its syntax trees.

Layers, bottom to top: core -> images and nn -> engine -> methods -> study -> analysis -> the CLI.
A module imports only from its own layer and the layers below; no package import inside a function
(the CLI entry point aside); no private name of another module; no ``unittest.mock``; no import circle.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "desupcon"
LAYERS = {"core": 0, "images": 1, "nn": 1, "engine": 2, "methods": 3, "study": 4, "analysis": 5, "__main__": 6}
LAZY_IMPORTS_ALLOWED = {"desupcon.__main__"}  # keeps --help and argument errors fast


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top-level package


def _imports(tree: ast.Module):
    """``(imported module, names, inside a function, line)`` of every import of the package."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, [], in_function, child.lineno) for a in child.names
                             if a.name.split(".")[0] in ("desupcon", "unittest"))
            elif isinstance(child, ast.ImportFrom) and child.level > 0:  # relative: always the package's own
                found.append((f"{'.' * child.level}{child.module or ''}", [a.name for a in child.names], in_function,
                              child.lineno))
            elif isinstance(child, ast.ImportFrom) and child.module.split(".")[0] in ("desupcon", "unittest"):
                found.append((child.module, [a.name for a in child.names], in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return found


MODULES = {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _targets(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: ``from desupcon.nn import losses`` reaches ``desupcon.nn.losses``."""
    if module in PACKAGES and names:
        subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
        if subs:
            return subs
    return [module]


def test_every_module_is_in_a_layer():
    assert set(LAYERS) - {"__main__"} == {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    for module in MODULES:
        assert module == "desupcon" or _layer(module) in LAYERS, f"{module} is in no layer of LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_rules(module):
    tree, layer = MODULES[module], _layer(module)
    for imported, names, in_function, line in _imports(tree):
        where = f"{module} line {line}: {imported}"
        assert imported.split(".")[0] != "unittest", f"{where}: the package never uses unittest (give the code a seam)"
        assert not imported.startswith("."), f"{where}: import the package by its absolute name (desupcon.<layer>...)"
        assert not in_function or module in LAZY_IMPORTS_ALLOWED, f"{where} is imported inside a function"
        assert not any(n.startswith("_") for n in names), f"{where}: imports a private name {names}"
        if layer is None:  # the top-level package imports nothing of its own at import time
            raise AssertionError(f"{where}: desupcon/__init__.py re-exports lazily (EXPORTS), it imports nothing")
        for target in _targets(imported, names):
            assert target != module, f"{where}: a module importing itself"
            below = _layer(target)
            assert below is not None, f"{where}: import the module that defines a name, not the top-level package"
            same_folder = below == layer
            assert same_folder or LAYERS[below] < LAYERS[layer], (
                f"{where}: layer '{layer}' may import only from itself and the layers below it "
                f"({', '.join(k for k, v in LAYERS.items() if v < LAYERS[layer]) or 'none'})")


def test_there_is_no_import_circle():
    graph = {m: {t for imported, names, in_function, _ in _imports(tree) if not in_function
                 for t in _targets(imported, names) if t in MODULES and t != m}
             for m, tree in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                loop = path[path.index(t):] + [t]
                raise AssertionError("import circle: " + " -> ".join(loop))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks above fail on code that breaks each rule (a check that cannot fail proves nothing)."""
    bad = ast.parse("import unittest.mock\nfrom desupcon.study.train import _private\n"
                    "def f():\n    from desupcon.core import paths\n    from .prepared import cache_root\n")
    found = _imports(bad)
    assert [(m, n, f) for m, n, f, _ in found] == [
        ("unittest.mock", [], False), ("desupcon.study.train", ["_private"], False), ("desupcon.core", ["paths"], True),
        (".prepared", ["cache_root"], True)]
    assert _targets("desupcon.core", ["paths"]) == ["desupcon.core.paths"]
    assert LAYERS[_layer("desupcon.study.train")] > LAYERS[_layer("desupcon.engine.trainer")]


def test_every_import_the_readme_and_the_top_level_show_works():
    """The public names (README's examples, ``desupcon.EXPORTS``) stay importable wherever they moved."""
    import importlib

    import desupcon

    readme = (PACKAGE.parent / "README.md").read_text()
    lines = re.findall(r"^from (desupcon[\w.]*) import ([\w, ]+)$", readme, flags=re.M)
    assert lines, "the README shows no import of the package"
    for module, names in lines:
        imported = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"README: from {module} import {name} fails"
    for name in desupcon.EXPORTS:
        assert getattr(desupcon, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        desupcon.no_such_name
