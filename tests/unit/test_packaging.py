"""Packaging: every third-party module the installed packages import is a declared dependency in pyproject.toml,
every data file inside a package ships in the wheel, and the licence is an SPDX expression."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("attnflow", "components", "registry", "tasks", "flows", "infra")
# files inside a package directory that are used from a checkout, not at run time (Docker/Kubernetes files)
NOT_PACKAGE_DATA = ("infra/deploy/",)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    return {_normalise(re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0]) for dep in PYPROJECT["project"]["dependencies"]}


def _imports(path: Path) -> set[str]:
    """Top-level names of absolute imports anywhere in the file (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[str, list[str]]:
    """Imported top-level module -> the files importing it, outside the standard library and the project."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path):
                if name in sys.stdlib_module_names or name in PACKAGES or name == "__future__":
                    continue
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_scan_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom a.b import c\n\ndef g():\n    import sklearn.metrics\n    from . import x\n")
    assert _imports(f) == {"os", "a", "sklearn"}


def test_every_runtime_import_is_a_declared_dependency():
    declared = _declared()
    by_module = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in third_party_imports().items():
        dists = {_normalise(d) for d in by_module.get(module, [])}
        if not dists & declared:
            undeclared[module] = (sorted(dists) or ["not installed"], files[:3])
    assert not undeclared, f"imported but not in [project].dependencies of pyproject.toml: {undeclared}"


def test_known_imports_are_seen():
    """The scan is not vacuous: modules the project is known to import are found, with their distributions."""
    found = third_party_imports()
    assert {"torch", "transformers", "prefect", "mlflow", "sklearn", "matplotlib"} <= set(found)
    assert "scikit-learn" in _declared() and "matplotlib" in _declared()


def _package_data_patterns() -> dict[str, list[str]]:
    return PYPROJECT["tool"]["setuptools"]["package-data"]


def _shipped_files(patterns: dict[str, list[str]]) -> set[str]:
    """The files the package-data globs select (glob semantics, as setuptools: ``*`` stops at ``/``)."""
    return {str(p.relative_to(ROOT)) for package, pats in patterns.items() for pat in pats
            for p in (ROOT / package).glob(pat) if p.is_file()}


def test_every_data_file_in_a_package_is_package_data():
    shipped = _shipped_files(_package_data_patterns())
    missing = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*"):
            rel = str(path.relative_to(ROOT))
            if (path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts
                    or rel.startswith(NOT_PACKAGE_DATA)):
                continue
            if rel not in shipped:
                missing.append(rel)
    assert not missing, f"data files inside packages that the wheel would not ship (package-data): {missing}"
    assert {"registry/presets/quickstart.yaml", "registry/presets/lm/demo.yaml"} <= shipped


def test_package_data_globs_stop_at_directories():
    """``presets/*.yaml`` alone would leave ``presets/lm/`` out of the wheel; the check must see that."""
    assert "registry/presets/lm/demo.yaml" not in _shipped_files({"registry": ["presets/*.yaml"]})


def test_licence_is_an_spdx_expression():
    licence = PYPROJECT["project"]["license"]
    assert isinstance(licence, str) and re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*", licence)
