"""The component contract shared by every family (patches, benchmarks, analyzers, detectors, kernels).

A component is a small frozen dataclass: its fields are its parameters, typed and validated in
``__post_init__``; its class attributes are its capabilities (``onnx_exportable``, ``needs_probabilities``...),
read by tasks and flows instead of ``isinstance`` checks. ``from_params`` turns command-line strings into typed
values and names the offending parameter when something is wrong.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from typing import Any, ClassVar, Literal, Mapping, get_args, get_origin, get_type_hints

from components.heads import HeadSet

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


class ParamError(ValueError):
    """A parameter that does not exist, does not parse, or is out of range."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (ParamError, ValueError, TypeError) as e:
                errors.append(str(e))
        raise ParamError(f"{where}: cannot read {value!r} as {_type_name(tp)}")
    if origin is Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value.strip()):
                return a
        raise ParamError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            items = [v for v in re.split(r"[,\s]+", value.strip()) if v]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        elem = args[0] if args else Any
        out = [_coerce(v, elem, where) for v in items]
        return tuple(out) if origin is tuple else out
    if tp is HeadSet:
        try:
            return HeadSet.parse(value)
        except ValueError as e:
            raise ParamError(f"{where}: {e}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ParamError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ParamError(f"{where}: expected an integer, got a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ParamError(f"{where}: {value!r} is not an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise ParamError(f"{where}: expected a number, got a boolean")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamError(f"{where}: {value!r} is not a number") from None
    if tp is str:
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ParamError(f"{where}: unsupported parameter type {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) in (tuple, list):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    default: Any
    doc: str


_SECTION = re.compile(r"^(\S[^\n]*)\n-+$", re.M)  # a numpy-style section header: a title underlined by dashes
_ENTRY = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*(?::\s*(.*))?$")  # "name", "name : type" or "a, b : type"


def param_docs(cls: type) -> dict[str, str]:
    """Parameter descriptions from the numpy-style ``Parameters`` section of ``cls``'s own docstring.

    An entry is an unindented line ``name : type`` (or ``a, b : type``, or a bare ``name``) followed by its indented
    description; description lines are joined with single spaces. The section ends at the next section header (a
    title underlined by dashes) or at the end of the docstring. Returns ``{name: description}``; an entry without
    a description maps to ``""``.
    """
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    headers = list(_SECTION.finditer(doc))
    body = next((doc[h.end():headers[i + 1].start() if i + 1 < len(headers) else len(doc)]
                 for i, h in enumerate(headers) if h.group(1).strip() == "Parameters"), "")
    out: dict[str, str] = {}
    names: list[str] = []
    for line in body.splitlines():
        entry = _ENTRY.match(line) if line and not line[0].isspace() else None
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            out.update((n, "") for n in names)
        elif names and line.strip():
            for n in names:
                out[n] = (out[n] + " " + line.strip()).strip()
    return out


@dataclasses.dataclass(frozen=True)
class Component:
    """Base of every registered component. Subclasses are frozen dataclasses registered with ``@register``."""

    # set by @register
    component_name: ClassVar[str] = ""
    component_version: ClassVar[str] = "0.0.0"
    component_family: ClassVar[str] = ""
    component_paper: ClassVar[str | None] = None

    # capability flags (read by tasks/flows; never isinstance checks)
    onnx_exportable: ClassVar[bool] = False
    # needs_fit: ``fit(model, tokenizer, rows)`` returns a fitted copy; the evaluate task calls it on the
    # benchmark's train split before scoring, and logs ``fit_record()`` (fingerprint + summary of the fitted state)
    needs_fit: ClassVar[bool] = False
    # needs_images: the component acts on image tokens or image inputs and runs only on a vision-language model
    # (components/attention/vision.py); text-only flows and the registry-wide text-model tests leave it out, and
    # applying it to a text-only model raises before any compute (AttentionPatch.check_model)
    needs_images: ClassVar[bool] = False
    # parameters that make a meaningful instance (used by the contract tests, docs and `attnflow components`)
    example: ClassVar[dict[str, Any]] = {}

    # -- parameters ---------------------------------------------------------------------------------------------
    @classmethod
    def param_specs(cls) -> list[ParamSpec]:
        hints = get_type_hints(cls)
        docs = param_docs(cls)
        specs = []
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = dataclasses.MISSING
            specs.append(ParamSpec(f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
        return specs

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None) -> "Component":
        """Build from a mapping of parameter values; strings are parsed to the declared field types."""
        params = dict(params or {})
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
        unknown = sorted(set(params) - set(fields))
        name = cls.component_name or cls.__name__
        if unknown:
            valid = ", ".join(fields) or "(none)"
            raise ParamError(f"{name}: unknown parameter(s) {', '.join(unknown)}; valid parameters: {valid}")
        kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in params.items()}
        try:
            return cls(**kwargs)
        except ParamError:
            raise
        except (ValueError, TypeError) as e:
            raise ParamError(f"{name}: {e}") from None

    def params(self) -> dict[str, Any]:
        """Parameter values as JSON-friendly data (HeadSet -> its text form)."""
        from registry import params_of

        return params_of(self)

    def replace(self, **changes: Any) -> "Component":
        return dataclasses.replace(self, **changes)

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def ref(self) -> str:
        return f"{self.component_name}@{self.component_version}"

    def label(self) -> str:
        """A short human label: name plus the parameters that differ from the defaults."""
        defaults = {p.name: p.default for p in self.param_specs()}
        diffs = []
        for k, v in self.params().items():
            d = defaults.get(k, dataclasses.MISSING)
            d = d.to_param() if hasattr(d, "to_param") else d
            if isinstance(d, tuple):
                d = list(d)
            if v != d:
                diffs.append(f"{k}={v}")
        return self.component_name + (f"({', '.join(diffs)})" if diffs else "")

    def fingerprint(self) -> str:
        from registry import fingerprint

        return fingerprint(self)

    # -- fitting (components with needs_fit = True override both) ---------------------------------------------------
    def fit(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> "Component":
        """Return a copy fitted on ``rows`` (a benchmark's train split)."""
        raise NotImplementedError(f"{self.component_name} has nothing to fit")

    def fit_record(self) -> dict[str, Any]:
        """Fitted state as plain data: ``fingerprint`` and scalar summary values (logged as run tags), optionally a
        ``table`` (list of row dicts) and its ``figure`` spec (logged as a breakdown and figure); {} if not fitted."""
        return {}


def unescape(text: str) -> str:
    """A text parameter with backslash escapes decoded (``\\n`` -> newline, ``\\t``, ``\\x20``). Text parameters are
    written escaped so that they survive spec strings, whose values are stripped of surrounding whitespace."""
    import codecs

    return codecs.decode(text, "unicode_escape") if "\\" in text else text


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ParamError when ``value`` lies outside [lo, hi] (or the open variants)."""
    bad = (
        (lo is not None and (value <= lo if lo_open else value < lo))
        or (hi is not None and (value >= hi if hi_open else value > hi))
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ParamError(f"{name}={value!r} is out of range {left}{lo_s}, {hi_s}{right}")
