"""The component registry: every method, benchmark, analyzer, detector and kernel registers here once.

A component class registers itself with a decorator:

    @register("zerotuning", version="1.0.0", family="patch", paper="arXiv:2505.11739",
              summary="Scale attention to the initial token per head (log-gamma bias on key 0).")
    @dataclass(frozen=True)
    class ZeroTuning(AttentionPatch): ...

and is found again by ``get("zerotuning")`` (newest version) or ``get("zerotuning@1")`` /
``get("zerotuning@1.0.0")``. Unknown names or versions raise :class:`UnknownComponentError` with a message
that lists what exists. Components are discovered by importing every module below ``components/``, so adding
a method touches only its own file (and its test).

The registry imports nothing heavy; MLflow publishing lives in :mod:`registry.publish`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import pkgutil
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = [
    "ComponentInfo",
    "UnknownComponentError",
    "register",
    "get",
    "all_components",
    "discover",
    "parse_ref",
    "code_fingerprint",
    "fingerprint",
]

FAMILIES = (
    "patch", "benchmark", "analyzer", "detector", "kernel", "study", "press", "prompt", "diffusion", "uncertainty",
)
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

T = TypeVar("T", bound=type)


class UnknownComponentError(LookupError):
    """An unknown component name or version; the message lists what exists."""


@dataclass(frozen=True)
class ComponentInfo:
    """What the registry knows about one version of one component."""

    name: str
    version: str
    family: str
    paper: str | None
    summary: str
    cls: type

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def source_file(self) -> Path:
        return Path(inspect.getfile(self.cls))

    @property
    def paper_url(self) -> str | None:
        """A link for the paper id: ``arXiv:2505.11739`` becomes an arxiv.org URL; URLs pass through."""
        if not self.paper:
            return None
        m = re.match(r"(?i)^arxiv:(\S+)$", self.paper)
        if m:
            return f"https://arxiv.org/abs/{m.group(1)}"
        return self.paper if self.paper.startswith("http") else None

    def create(self, params: dict[str, Any] | None = None) -> Any:
        """Instantiate with parameters (strings are converted to the field types and validated)."""
        return self.cls.from_params(params or {})

    def code_fingerprint(self) -> str:
        return code_fingerprint(self.cls)

    def describe(self) -> str:
        """What ``attnflow components --show`` prints: reference, family and paper; the class summary; one entry per
        parameter (name, type, description from the class docstring's ``Parameters`` section); an example spec; then
        the module docstring (mechanism, formula, paper and reference code, deviations)."""
        import sys

        doc = inspect.cleandoc(self.cls.__dict__.get("__doc__") or "")
        lines = [f"{self.ref}  [{self.family}]  {self.paper_url or self.paper or ''}".rstrip(), "",
                 doc.split("\n\n", 1)[0], "", "Parameters", "----------"]
        specs = self.cls.param_specs()
        for p in specs:
            lines.append(f"{p.name} : {p.type}")
            lines += [f"    {chunk}" for chunk in _wrap(p.doc or "(undocumented)", 112)]
        if not specs:
            lines.append("(none)")
        example = getattr(self.cls, "example", None)
        if example:
            from registry.specs import Spec

            lines += ["", f"Example: {Spec(self.name, None, dict(example)).text()}"]
        module_doc = (sys.modules[self.cls.__module__].__doc__ or "").strip()
        return "\n".join(lines + (["", module_doc] if module_doc else []))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


_lock = threading.RLock()
_entries: dict[str, dict[str, ComponentInfo]] = {}
_discovered = False


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def register(
    name: str,
    *,
    version: str,
    family: str,
    paper: str | None = None,
    summary: str = "",
) -> Callable[[T], T]:
    """Class decorator: register a component version. Re-registering the same class is a no-op."""
    if not _NAME.match(name):
        raise ValueError(f"component name {name!r} must be lower_snake_case")
    if not _SEMVER.match(version):
        raise ValueError(f"component {name}: version {version!r} is not a semantic version like 1.0.0")
    if family not in FAMILIES:
        raise ValueError(f"component {name}: family {family!r} is not one of {', '.join(FAMILIES)}")

    def deco(cls: T) -> T:
        doc = inspect.getdoc(cls) or ""
        info = ComponentInfo(
            name=name,
            version=version,
            family=family,
            paper=paper,
            summary=summary or (doc.splitlines()[0] if doc else ""),
            cls=cls,
        )
        with _lock:
            versions = _entries.setdefault(name, {})
            old = versions.get(version)
            if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(
                    f"component {name}@{version} is registered twice: {old.cls.__module__}.{old.cls.__qualname__} "
                    f"and {cls.__module__}.{cls.__qualname__}; bump the version of one of them"
                )
            versions[version] = info
        cls.component_name = name  # type: ignore[attr-defined]
        cls.component_version = version  # type: ignore[attr-defined]
        cls.component_family = family  # type: ignore[attr-defined]
        cls.component_paper = paper  # type: ignore[attr-defined]
        return cls

    return deco


def discover() -> None:
    """Import every module below ``components`` so their decorators run (idempotent, thread-safe)."""
    global _discovered
    with _lock:
        if _discovered:
            return
        import components

        for mod in pkgutil.walk_packages(components.__path__, prefix="components."):
            if mod.name.rsplit(".", 1)[-1].startswith("_"):
                continue  # private helpers are imported by the modules that need them
            importlib.import_module(mod.name)
        _discovered = True


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name@version`` into its parts (version None when absent)."""
    ref = ref.strip()
    if "@" in ref:
        name, version = ref.split("@", 1)
        return name.strip(), version.strip() or None
    return ref, None


def all_components(family: str | None = None) -> list[ComponentInfo]:
    """Every registered component version (sorted by family, name, version)."""
    discover()
    with _lock:
        infos = [i for versions in _entries.values() for i in versions.values()]
    if family is not None:
        infos = [i for i in infos if i.family == family]
    return sorted(infos, key=lambda i: (FAMILIES.index(i.family), i.name, _version_key(i.version)))


def latest(family: str | None = None) -> list[ComponentInfo]:
    """The newest version of each component."""
    out: dict[str, ComponentInfo] = {}
    for info in all_components(family):
        out[info.name] = info  # sorted ascending, so the last one wins
    return list(out.values())


def get(ref: str, family: str | None = None) -> ComponentInfo:
    """Look a component up by ``name``, ``name@major``, ``name@major.minor`` or ``name@x.y.z``."""
    discover()
    name, version = parse_ref(ref)
    with _lock:
        versions = dict(_entries.get(name, {}))
    if family is not None:
        versions = {v: i for v, i in versions.items() if i.family == family}
    if not versions:
        names = sorted({i.name for i in all_components(family)})
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        kind = f"{family} component" if family else "component"
        raise UnknownComponentError(f"unknown {kind} {name!r}.{hint} Registered: {', '.join(names)}")
    ordered = sorted(versions, key=_version_key)
    if version is None:
        return versions[ordered[-1]]
    if not re.match(r"^\d+(\.\d+){0,2}$", version):
        raise UnknownComponentError(f"{name}@{version}: a version looks like 1, 1.2 or 1.2.3")
    matching = [v for v in ordered if v == version or v.startswith(version + ".")]
    if not matching:
        raise UnknownComponentError(
            f"component {name!r} has no version {version!r}; versions: {', '.join(ordered)}"
        )
    return versions[matching[-1]]


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints: exactly what ran = the code the component runs (its module and everything it imports inside the
# project, found by parsing imports; see registry/sources.py) + its params
# ---------------------------------------------------------------------------------------------------------------


def _source_modules(cls: type) -> list[str]:
    """The in-project modules that define ``cls``'s behaviour: the modules of its class hierarchy and their
    transitive in-project imports, plus any ``fingerprint_modules`` a class declares (only needed for modules it
    loads dynamically, which parsing imports cannot see)."""
    from registry import sources

    roots: list[str] = []
    packages = sources.project_packages()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in packages:
            roots.append(klass.__module__)
        roots += list(getattr(klass, "fingerprint_modules", ()))
    return sources.closure(roots)


def code_fingerprint(cls: type) -> str:
    """sha256 over the normalised source (syntax tree without comments and docstrings) of every project module the
    component's code imports, directly or not."""
    from registry import sources

    h = hashlib.sha256()
    for mod in _source_modules(cls):
        h.update(mod.encode())
        h.update(sources.normalized_source(mod).encode())
    return h.hexdigest()[:16]


def _canonical(value: Any) -> Any:
    if hasattr(value, "to_param"):
        return value.to_param()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return value


def params_of(component: Any) -> dict[str, Any]:
    """The component's parameters as JSON-friendly values."""
    return _canonical(component)


def fingerprint(component: Any, code: str | None = None) -> str:
    """sha256 of (code fingerprint, canonical parameter values): identifies exactly what ran. ``code``: the code
    fingerprint of the component's class when already computed."""
    code = code or code_fingerprint(type(component))
    payload = json.dumps({"code": code, "params": params_of(component)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
