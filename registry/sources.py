"""Which project source files define a component's behaviour, derived from the code itself.

A component's code fingerprint covers its module, the in-project modules of its base classes and, transitively,
every in-project module they import (``components/``, ``tasks/``, ``registry/``, ``infra/``, ...). Imports are
found by parsing the source with :mod:`ast`, so nothing is imported to find them: top-level and function-level
``import a.b`` / ``from a.b import c`` / relative ``from ._helper import x`` all count, and importing ``a.b.c``
also counts the packages ``a`` and ``a.b`` (Python runs their ``__init__``). Modules outside the project
(torch, transformers, the standard library) are not followed.

Each file contributes its syntax tree with docstrings removed (``ast.dump``), not its bytes: editing a comment,
a docstring or the layout changes no fingerprint, while any change to what the code does changes the fingerprint
of exactly the components whose import closure contains that file. Modules that a component loads dynamically
(``importlib.import_module`` with a computed name) are invisible to this; list them in the component's
``fingerprint_modules`` class attribute.
"""

from __future__ import annotations

import ast
import functools
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LOCK = threading.Lock()
_MEMO: dict[tuple[str, int, int], tuple[str, tuple[str, ...]]] = {}  # (path, mtime_ns, size) -> (dump, imports)


@functools.lru_cache(maxsize=8)
def project_packages(root: Path = ROOT) -> frozenset[str]:
    """Top-level packages of the project (folders with an ``__init__.py``; tests excluded)."""
    return frozenset(p.parent.name for p in root.glob("*/__init__.py") if p.parent.name != "tests")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of an in-project module or package, or None when it is not one."""
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _source_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _imports(tree: ast.AST, module: str, is_package: bool) -> tuple[str, ...]:
    """Absolute names imported anywhere in the tree (a ``from x import y`` yields both ``x`` and ``x.y``)."""
    out: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . / .. / ._helper
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    return tuple(out)


def parsed(module: str, path: Path) -> tuple[str, tuple[str, ...]]:
    """(normalised source, imported names) of one file, memoised by path, mtime and size."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
    tree = ast.parse(_source_text(path), filename=str(path))
    imports = _imports(tree, module, path.name == "__init__.py")
    value = (ast.dump(_strip_docstrings(tree)), imports)
    with _LOCK:
        _MEMO[key] = value
    return value


def closure(modules: list[str], root: Path = ROOT) -> list[str]:
    """Every in-project module reachable from ``modules`` through imports (parent packages included), sorted."""
    packages = project_packages(root)
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages:
            continue
        path = module_file(name, root)
        if path is None:  # ``from pkg import attr``: attr is not a module
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += list(parsed(name, path)[1])
    return sorted(seen)


def normalized_source(module: str, root: Path = ROOT) -> str:
    path = module_file(module, root)
    return parsed(module, path)[0] if path else ""
