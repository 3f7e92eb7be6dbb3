"""Packaging: ``pyproject.toml`` declares what ``desupcon`` imports, as ranges that the pinned
``requirements.txt`` satisfies. Offline and quick; the real ``pip install .`` in a fresh venv runs
in ``.ci/run``."""

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
RUNTIME = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
EXTRAS = {extra: {canonicalize_name(r.name): r for r in map(Requirement, reqs)}
          for extra, reqs in PROJECT["optional-dependencies"].items()}
IMPORT_TO_DIST = {"sklearn": "scikit-learn", "yaml": "pyyaml", "PIL": "pillow", "IPython": "ipython"}  # import name -> distribution


def _pins() -> dict[str, Requirement]:
    """``requirements.txt`` as ``{name: Requirement}``, each an exact ``==`` pin."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", f"not a pin: {line}"
            pins[canonicalize_name(req.name)] = req
    return pins


def _imports() -> list[tuple[str, str, bool]]:
    """``(file, top-level module, inside a function)`` for each absolute import in the package's modules."""
    found = []

    def visit(node, file, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((file, alias.name.split(".")[0], in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0:
                found.append((file, child.module.split(".")[0], in_function))
            visit(child, file, nested)

    for path in sorted((ROOT / "desupcon").rglob("*.py")):
        visit(ast.parse(path.read_text(), filename=str(path)), str(path.relative_to(ROOT)), False)
    return found


def _third_party() -> list[tuple[str, str, bool]]:
    return [(file, module, nested) for file, module, nested in _imports()
            if module not in sys.stdlib_module_names and module not in ("desupcon", "__future__")]


def test_the_runtime_dependencies_and_extras_are_declared():
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["desupcon", "desupcon.*"]
    assert set(RUNTIME) == {"torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "plotly", "tqdm",
                            "pyyaml", "pillow"}
    assert {"notebooks", "hf", "test"} <= set(EXTRAS)
    assert {"jupyterlab", "ipykernel", "nbmake"} <= set(EXTRAS["notebooks"]) and "datasets" in EXTRAS["hf"]
    assert {"pytest", "pytorch-metric-learning", "selenium"} <= set(EXTRAS["test"])
    for name, req in RUNTIME.items():  # a range, not a pin: `pip install .` must coexist with other projects
        assert req.specifier and not any(s.operator in ("==", "===") for s in req.specifier), f"{name}: {req}"


def test_every_pin_satisfies_the_declared_range():
    pins = _pins()
    declared = {"runtime": RUNTIME, **EXTRAS}
    assert set(RUNTIME) <= set(pins), f"runtime dependencies without a pin: {sorted(set(RUNTIME) - set(pins))}"
    for name, pin in pins.items():
        where = {group: reqs[name] for group, reqs in declared.items() if name in reqs}
        assert where, f"requirements.txt pins {name}, which pyproject.toml declares nowhere (dependencies or an extra)"
        version = next(iter(pin.specifier)).version
        for group, req in where.items():
            assert req.specifier.contains(version, prereleases=True), \
                f"requirements.txt pins {name}=={version}, outside pyproject.toml's {group} range '{req.specifier}'"


def test_every_third_party_import_is_a_declared_dependency():
    imports = _third_party()
    assert {"torch", "numpy", "yaml", "sklearn"} <= {module for _, module, _ in imports}  # the walk finds them
    optional = {name for reqs in EXTRAS.values() for name in reqs}
    for file, module, nested in imports:
        dist = canonicalize_name(IMPORT_TO_DIST.get(module, module))
        if dist in RUNTIME:
            continue
        assert nested and dist in optional, (
            f"{file} imports {module} ({dist}), which is not a runtime dependency of pyproject.toml"
            + ("" if nested else " (a module-level import: it must be one)")
            + ("" if dist in optional else " nor in an extra"))


@pytest.mark.parametrize("source, expected", [
    ("import yaml\ndef f():\n    import nbformat\n", [("yaml", False), ("nbformat", True)]),
    ("from .store import x\nfrom torch import nn\nlambda: __import__('os')\n", [("torch", False)]),
])
def test_the_import_walk_tells_module_level_from_function_imports(tmp_path, monkeypatch, source, expected):
    (tmp_path / "desupcon").mkdir()
    (tmp_path / "desupcon" / "m.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [(module, nested) for _, module, nested in _imports()] == expected
