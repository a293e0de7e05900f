"""Component specs as users write them: ``name[@version][(key=value, ...)]``.

    zerotuning                      newest version, default parameters
    zerotuning@1.0.0(gamma=4)       a version and a parameter
    head_mask(heads=0:1;2:3)        ';' may stand for ',' inside a value
    kv_retrieval(n_pairs=16)        benchmarks use the same syntax

A comma-separated list (``baseline,zerotuning(gamma=2),head_mask(heads=0:1)``) splits only at top-level commas.
Everything is validated against the registry before any model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import registry
from registry import ComponentInfo

_SPEC = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:@\s*([0-9][0-9.]*))?\s*(?:\((.*)\))?\s*$", re.S)


class SpecError(ValueError):
    """A malformed component spec."""


@dataclass(frozen=True)
class Spec:
    """A parsed spec: registry reference plus raw parameter values."""

    name: str
    version: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    def info(self, family: str | None = None) -> ComponentInfo:
        return registry.get(self.ref, family=family)

    def create(self, family: str | None = None, extra: dict[str, Any] | None = None) -> Any:
        return self.info(family).create({**self.params, **(extra or {})})

    def resolve(self, family: str | None = None, extra: dict[str, Any] | None = None) -> "ResolvedSpec":
        """Build the component once and pin it (see :class:`ResolvedSpec`)."""
        return ResolvedSpec.of(self.create(family, extra))

    def text(self) -> str:
        """Back to ``name@version(k=v, ...)`` (see :func:`format_spec`)."""
        return format_spec(self.ref, self.params)


def format_spec(ref: str, params: Mapping[str, Any]) -> str:
    """The one spec-to-text function: ``ref(k=v, ...)``. A list value is written comma-joined, and every comma
    inside a value as ';' (``parse`` reads it back)."""
    def value(v: Any) -> str:
        return (",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)).replace(",", ";")

    ps = ", ".join(f"{k}={value(v)}" for k, v in params.items())
    return ref + (f"({ps})" if ps else "")


def spec_text(component: Any) -> str:
    """The spec that recreates ``component`` exactly: ``name@x.y.z(params)`` (version pinned)."""
    return format_spec(f"{component.component_name}@{component.component_version}", component.params())


@dataclass(frozen=True)
class ResolvedSpec:
    """A component resolved once: its pinned spec and identity, computed once, plus the instance.

    Flows resolve every spec of a request once (``tasks.plan.plan_request``) and hand these to tasks instead of
    spec strings: fingerprints, labels and the pinned text are read, never recomputed. Hashable (by ``text`` and
    ``fingerprint``) and picklable; the instance (``component``) travels with it inside a process and is rebuilt
    once from ``text`` after unpickling (a process-based task runner).
    """

    family: str
    name: str
    version: str
    text: str  # name@x.y.z(params): recreates the component exactly
    fingerprint: str  # registry.fingerprint: code + parameters
    code_fingerprint: str
    label: str
    paper: str | None = None
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, component: Any) -> "ResolvedSpec":
        """Pin a built component (fingerprint, code fingerprint, label and text computed here, once)."""
        code = registry.code_fingerprint(type(component))
        out = cls(family=component.component_family, name=component.component_name,
                  version=component.component_version, text=spec_text(component),
                  fingerprint=registry.fingerprint(component, code=code), code_fingerprint=code,
                  label=component.label(), paper=component.component_paper, params=component.params())
        object.__setattr__(out, "_component", component)
        return out

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def component(self) -> Any:
        """The component instance (built from ``text`` at most once per process)."""
        comp = self.__dict__.get("_component")
        if comp is None:
            comp = parse(self.text).create(self.family)
            object.__setattr__(self, "_component", comp)
        return comp

    def record(self) -> dict[str, Any]:
        """Identity as plain data (the ``component`` / ``benchmark`` entries of an evaluation result)."""
        return {"name": self.name, "version": self.version, "family": self.family, "paper": self.paper,
                "params": dict(self.params), "fingerprint": self.fingerprint,
                "code_fingerprint": self.code_fingerprint, "label": self.label, "spec": self.text}

    def __str__(self) -> str:
        return self.text

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_component"}


def resolved(spec: "ResolvedSpec | Spec | str | Any", family: str) -> ResolvedSpec:
    """A :class:`ResolvedSpec` from a resolved spec (returned as is), a parsed spec, a spec string or a built
    component of ``family``."""
    if isinstance(spec, ResolvedSpec):
        if spec.family != family:
            raise SpecError(f"{spec.text} is a {spec.family} component, not a {family}")
        return spec
    if isinstance(spec, str):
        spec = parse(spec)
    if isinstance(spec, Spec):
        return spec.resolve(family)
    if getattr(spec, "component_family", None) != family:
        raise SpecError(f"{spec!r} is not a {family} component")
    return ResolvedSpec.of(spec)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside parentheses/brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced parentheses in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise SpecError(f"unbalanced parentheses in {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_kv(items: list[str] | tuple[str, ...], where: str = "--param") -> dict[str, str]:
    """``["k=v", ...]`` -> dict; a clear error for entries without '='."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"{where} {item!r}: expected key=value")
        k, v = item.split("=", 1)
        if not k.strip():
            raise SpecError(f"{where} {item!r}: empty key")
        out[k.strip()] = v.strip()
    return out


def parse(text: str) -> Spec:
    m = _SPEC.match(text)
    if not m:
        raise SpecError(f"cannot read component spec {text!r}; expected name[@version][(key=value, ...)]")
    name, version, inner = m.group(1), m.group(2), m.group(3)
    params: dict[str, Any] = {}
    if inner and inner.strip():
        for item in split_top_level(inner):
            if "=" not in item:
                raise SpecError(f"spec {text!r}: parameter {item!r} must be key=value")
            k, v = item.split("=", 1)
            params[k.strip()] = v.strip().replace(";", ",")
    return Spec(name, version, params)


def parse_list(text: str | list[str]) -> list[Spec]:
    items = split_top_level(text) if isinstance(text, str) else [i for t in text for i in split_top_level(t)]
    if not items:
        raise SpecError("empty component list")
    return [parse(i) for i in items]


PRESET_DIR = Path(__file__).resolve().parent / "presets"


def load_preset(name_or_path: str, schema: Any = None) -> dict[str, Any]:
    """A YAML preset by name (``registry/presets/<name>.yaml``) or path. ``include: <name>`` merges a base preset
    (looked up beside the including file first): mappings merge key by key, other values are replaced.

    ``schema`` (a pydantic model such as ``flows.params.ComparisonPreset``) checks the merged preset: an unknown key
    or a value of the wrong type is an error naming the file and listing the valid keys. A YAML syntax error names
    the file and line."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        where = (PRESET_DIR / name_or_path).parent
        names = sorted(p.stem for p in where.glob("*.yaml")) if where.is_dir() else []
        raise SpecError(f"unknown preset {name_or_path!r}; presets: {', '.join(names) or '(none)'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError(f"preset {where}: YAML syntax error: {problem}") from None
    if not isinstance(data, dict):
        raise SpecError(f"preset {str(path)!r} must be a mapping")
    base = data.pop("include", None)
    if base:
        sibling = path.parent / f"{base}.yaml"
        parent = load_preset(str(sibling) if sibling.is_file() else base)
        data = {**parent, **{k: ({**parent[k], **v} if isinstance(v, dict) and isinstance(parent.get(k), dict) else v)
                             for k, v in data.items()}}
    if schema is not None:
        check_preset(data, schema, str(path))
    return data


def check_preset(data: dict[str, Any], schema: Any, where: str) -> None:
    """Check a preset's keys and values against a pydantic model; raise SpecError naming the file."""
    import pydantic

    valid = sorted([*schema.model_fields, "include"])
    unknown = sorted(set(data) - set(schema.model_fields))
    if unknown:
        raise SpecError(f"preset {where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    try:
        schema.model_validate(data)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err['input']!r})"
                             for err in e.errors())
        raise SpecError(f"preset {where}: {problems}") from None
