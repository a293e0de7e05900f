"""CLI commands generated from Prefect flows: a flow's signature is the one definition of its parameters.

Prefect turns a flow's signature (types from ``flows/params.py``, ``Literal`` choices, pydantic ``Field`` ranges)
and its docstring ``Args:`` section into a JSON schema: the form of the Prefect UI, the validation of a deployment
run. ``flow_command`` reads the same schema to build the Typer command: option names, help text, defaults, choices.
A flow parameter changes in one place, the flow; the command, ``attnflow run``, the UI form and the validation
before any server starts follow (``tests/unit/test_flow_commands.py`` fails when a command drifts from its flow).

The naming scheme, one for every command: ``batch_size`` -> ``--batch-size``; a list parameter takes comma-separated
values (``--seeds 0,1,2``, repeatable); a dict parameter takes repeatable ``key=value`` under its singular name
(``params`` -> ``--param``, ``task_params`` -> ``--task-param``); a boolean is ``--name/--no-name``. Short flags mean
the same thing in every command (``SHORT``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import typer
import typer.main
from typer.core import TyperGroup

#: short flags, the same meaning in every command that has the parameter
SHORT: dict[str, str] = {"model": "-m", "component": "-c", "components": "-c", "task": "-t", "tasks": "-t",
                         "params": "-p", "analyzer": "-a", "detectors": "-d"}
#: older option names still accepted (not shown as the option's name)
ALIASES: dict[str, tuple[str, ...]] = {"overrides": ("--set",), "register_model": ("--register",),
                                       "limit_per_source": ("--limit",)}
_ITEM_WORDS = {"integer": "integers", "number": "numbers", "boolean": "booleans (true/false)"}


@dataclass
class FlowOption:
    """One flow parameter as a command-line option, read from the flow's parameter schema."""

    param: str
    opts: tuple[str, ...]  # the long name first
    kind: str  # str, int, float, bool, list, dict, nested (dict of dicts)
    item: str = "string"  # JSON type of list items
    help: str = ""
    default: Any = None
    required: bool = False
    choices: tuple[str, ...] = ()
    parent: str | None = None  # a field of this pydantic-model parameter (``prep.valid_frac`` -> ``--valid-frac``)
    argument: bool = False  # a positional argument (file lists), not an option

    @property
    def name(self) -> str:
        return self.opts[0] if not self.argument else self.param.upper()

    @property
    def key(self) -> str:
        """The command's own name for it (an identifier)."""
        return f"{self.parent}__{self.param}" if self.parent else self.param


def _description(schema: dict[str, Any]) -> str:
    return " ".join(str(schema.get("description", "")).split())


def option_for(param: str, schema: dict[str, Any], default: Any, required: bool) -> FlowOption:
    """The option of one flow parameter, from its JSON schema (as Prefect generated it)."""
    types = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    if len(types) != 1 or "type" not in types[0]:
        raise TypeError(f"flow parameter {param!r} ({schema}) has no command-line form: give it one plain type")
    t = types[0]
    kind = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
            "object": "dict"}[t["type"]]
    if kind == "dict" and isinstance(t.get("additionalProperties"), dict) \
            and t["additionalProperties"].get("type") == "object":
        kind = "nested"
    long = "--" + (param[:-1] if kind in ("dict", "nested") and param.endswith("s") else param).replace("_", "-")
    opts = (long, *ALIASES.get(param, ()), *((SHORT[param],) if param in SHORT else ()))
    return FlowOption(param, opts, kind, item=t.get("items", {}).get("type", "string"), help=_description(schema),
                      default=default, required=required, choices=tuple(t.get("enum", ())))


def flow_options(flow: Any, arguments: tuple[str, ...] = ()) -> list[FlowOption]:
    """Every parameter of ``flow`` as an option, in signature order; a pydantic-model parameter (``prep:
    PrepOptions``) becomes one option per field; ``arguments`` are positional."""
    sig = inspect.signature(flow.fn)
    props = flow.parameters.properties
    definitions = flow.parameters.definitions or {}
    out = []
    for name, p in sig.parameters.items():
        required = p.default is inspect.Parameter.empty
        ref = props[name].get("$ref") or next((s.get("$ref") for s in props[name].get("allOf", [])), None)
        if ref:
            if required:
                raise TypeError(f"flow parameter {name!r}: a model parameter needs a default to become options")
            fields = definitions[ref.rsplit("/", 1)[-1]]["properties"]
            values = p.default.model_dump()
            out += [dataclasses.replace(option_for(f, s, values[f], False), parent=name) for f, s in fields.items()]
            continue
        opt = option_for(name, props[name], None if required else p.default, required)
        out.append(dataclasses.replace(opt, argument=True) if name in arguments else opt)
    return out


def default_text(o: FlowOption) -> str | bool:
    """How ``--help`` shows the flow's default (False: nothing to show)."""
    if o.required or o.default is None or o.default == {} or o.default == []:
        return False
    if o.kind == "list":
        return ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in o.default)
    return str(o.default)


# ---------------------------------------------------------------------------------------------- values from text

def _item(o: FlowOption, text: str) -> Any:
    if o.item == "integer":
        return int(text)
    if o.item == "number":
        return float(text)
    if o.item == "boolean":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return low in ("true", "1", "yes")
    return text.strip()


def convert(o: FlowOption, raw: Any) -> Any:
    """The flow value of an option's command-line value; bad text is a ``ValueError`` naming the option."""
    from registry.specs import parse_kv, split_top_level

    if o.kind == "list" and o.argument:
        return [_item(o, t) for t in raw]  # file names: no comma splitting
    if o.kind == "list":
        texts = [part for v in raw for part in split_top_level(v) if part.strip()]
        try:
            return [_item(o, t) for t in texts]
        except ValueError:
            given = ",".join(raw)
            example = {"integer": "0,1,2", "number": "0.5,1,2", "boolean": "true,false"}.get(o.item, "a,b")
            raise ValueError(f"{o.name} {given!r}: give comma-separated {_ITEM_WORDS.get(o.item, 'values')}, "
                             f"e.g. {example}") from None
    if o.kind == "dict":
        return parse_kv(list(raw), o.name)
    if o.kind == "nested":
        out: dict[str, dict[str, Any]] = {}
        for key, value in parse_kv(list(raw), o.name).items():
            outer, _, inner = key.partition(".")
            if not outer or not inner:
                raise ValueError(f"{o.name} {key}={value}: give <name>.<key>=value, e.g. {o.param[:-1]}.n=64")
            out.setdefault(outer, {})[inner] = number_or_text(value)
        return out
    return raw


def number_or_text(text: str) -> Any:
    """An int or float when the text is one, else the text (the receiving component validates it)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------------------------------------- the command

@dataclass
class Call:
    """One invocation of a generated command: the flow parameters (defaults filled in), the ones given on the
    command line, and the values of the command's own extra options."""

    params: dict[str, Any]
    given: set[str]
    extras: dict[str, Any] = field(default_factory=dict)


def _typer_param(o: FlowOption) -> inspect.Parameter:
    from rich.markup import escape  # help is rendered as rich markup: "name[@version]" must stay as written

    if o.argument:
        info = typer.Argument(... if o.required else None, help=escape(o.help), show_default=False)
        return inspect.Parameter(o.key, inspect.Parameter.KEYWORD_ONLY, default=info,
                                 annotation=Optional[list[str]] if o.kind == "list" else Optional[str])
    if o.kind == "bool":
        opts = tuple(f"{n}/--no-{n[2:]}" if n.startswith("--") else n for n in o.opts)
        info = typer.Option(bool(o.default), *opts, help=escape(o.help), show_default=True)
        return inspect.Parameter(o.key, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=bool)
    many = o.kind in ("list", "dict", "nested")
    annotation = {"int": Optional[int], "float": Optional[float]}.get(o.kind, Optional[list[str]] if many
                                                                    else Optional[str])
    metavar = ("K=V" if o.kind != "list" else "LIST") if many else (o.choices and "|".join(o.choices) or None)
    shown = default_text(o)  # the flow's default, for --help only: an option left out is not passed on
    default = ... if o.required else ([shown] if many and shown else o.default if not many else None)
    repeat = "" if not many or o.kind == "list" else " (repeatable)"
    info = typer.Option(default, *o.opts, help=escape(o.help) + repeat, show_default=shown is not False,
                        metavar=metavar)
    return inspect.Parameter(o.key, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def flow_command(app: typer.Typer, flow: Any, *, name: str | None = None, help: str | None = None,
                 arguments: tuple[str, ...] = (),
                 extras: dict[str, tuple[Any, Any]] | None = None,
                 convert_with: dict[str, Callable[[list[str]], Any]] | None = None,
                 prepare: Callable[[Call], None] | None = None,
                 show: Callable[[Any, Call], None] | None = None,
                 run: Callable[[Call], Any] | None = None) -> Callable[..., None]:
    """Add ``attnflow <flow name>`` to ``app``: one option per flow parameter (``flow_options``).

    Parameters
    ----------
    flow : prefect.Flow
        The flow; the command is named after it.
    name : str, optional
        The command's name where it differs from the flow's (``pawn train`` runs ``pawn-train``).
    arguments : tuple of str, optional
        Parameters given as positional arguments (lists of files).
    help : str, optional
        The command's help (default: the first paragraph of the flow's docstring).
    extras : dict, optional
        Options of the command itself, not of the flow (``--preset``): name -> (annotation, ``typer.Option``).
    convert_with : dict, optional
        Parameter name -> a function of the raw option values, where the generic conversion does not fit.
    prepare : callable, optional
        Called with the ``Call`` after the parameters passed the flow's type checks and before any server starts:
        the command's domain validation (plans, model configs), preset expansion. It may edit ``call.params``.
    show : callable, optional
        Prints the flow's result (default: its table, if any).
    run : callable, optional
        Does the flow's work in this process instead of running the flow (``pawn prep``: one cached task, no
        Prefect server); gets the ``Call``, returns what ``show`` prints.
    """
    from attnflow import cli

    options = flow_options(flow, arguments)
    by_key = {o.key: o for o in options}
    sig_defaults = {k: p.default for k, p in inspect.signature(flow.fn).parameters.items()}
    extras = extras or {}
    clash = set(extras) & set(by_key)
    if clash:
        raise TypeError(f"extra option(s) {sorted(clash)} of command {flow.name!r} shadow flow parameters")

    def command(ctx: typer.Context, **values: Any) -> None:
        typed = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # typer vendors click: compare the enum by name
        given_keys = {k for k in by_key if getattr(ctx.get_parameter_source(k), "name", None) in typed
                      and values[k] is not None}
        params = {k: v for k, v in sig_defaults.items() if v is not inspect.Parameter.empty}
        models = {o.parent for o in options if o.parent}
        params.update({m: params[m].model_dump() for m in models})
        call = Call(params=params, given={by_key[k].parent or by_key[k].param for k in given_keys},
                    extras={k: values[k] for k in extras})

        def parse() -> None:
            for k in given_keys:
                o = by_key[k]
                fn = (convert_with or {}).get(o.param)
                value = fn(values[k]) if fn else convert(o, values[k])
                if o.parent:
                    call.params[o.parent][o.param] = value
                else:
                    call.params[o.param] = value

        cli.guarded(parse)
        cli.check_params(flow, call.params)  # types, choices, ranges: the flow's own, before any server
        for m in models:  # the model parameters as the flow's own types, for the checks below
            call.params[m] = type(sig_defaults[m]).model_validate(call.params[m])
        if prepare:
            cli.guarded(lambda: prepare(call))
            cli.check_params(flow, call.params)
        out = cli.guarded(lambda: run(call)) if run else cli.run_flow(flow, checked=True, **call.params)
        (show or cli.show_result)(out, call)

    sig = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    sig += [_typer_param(o) for o in options]
    sig += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=ann)
            for k, (ann, info) in extras.items()]
    command.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    command.__name__ = re.sub(r"\W", "_", name or flow.name)
    doc = help or (flow.description or "").split("\n\n")[0]
    from rich.markup import escape

    command.__doc__ = escape(f"{' '.join(doc.split()).rstrip('.')} (runs the `{flow.name}` flow).")
    app.command(name or flow.name)(command)
    GENERATED[flow.name] = flow
    return command


#: command name -> the flow it was generated from (filled as commands are built)
GENERATED: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------- lazy commands

@dataclass
class LazyFlowCommand:
    """A generated command registered by name: the flow module is imported (torch and all) only when the command
    runs or shows its own help; the command list shows the flow's docstring summary, read from its source."""

    name: str
    target: str  # "flows.compare:compare"
    options: Callable[[], dict[str, Any]] | None = None  # -> keyword arguments of flow_command
    group: str = ""  # "" for a top-level command, else the sub-command group ("pawn")
    built: Any = None
    flow: Any = None

    @property
    def flow_names(self) -> tuple[str, ...]:
        """The names its flow may have: the command's, or in a group ``<group>-<name>`` (``pawn run``: ``pawn``)."""
        if not self.group:
            return (self.name,)
        return (self.group,) if self.name == "run" else (f"{self.group}-{self.name}",)

    def summary(self) -> str:
        import ast
        import importlib.util

        module, _, attr = self.target.partition(":")
        origin = importlib.util.find_spec(module).origin
        tree = ast.parse(open(origin, encoding="utf-8").read())
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == attr)
        return " ".join((ast.get_docstring(fn) or "").split("\n\n")[0].split())

    def placeholder(self) -> Any:
        from rich.markup import escape
        from typer.core import TyperCommand

        return TyperCommand(name=self.name, help=escape(self.summary()))

    def load(self) -> Any:
        if self.built is None:
            import importlib

            module, _, attr = self.target.partition(":")
            flow = getattr(importlib.import_module(module), attr)
            if flow.name not in self.flow_names:
                raise TypeError(f"command {self.name!r} runs flow {flow.name!r}: name them alike")
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            flow_command(sub, flow, name=self.name, **(self.options() if self.options else {}))
            self.flow = flow
            self.built = typer.main.get_command(sub)
            self.built.name = self.name
        return self.built


#: (group, command name) -> its lazily built flow command
LAZY: dict[tuple[str, str], LazyFlowCommand] = {}


def lazy_flow_command(name: str, target: str, options: Callable[[], dict[str, Any]] | None = None,
                      group: str = "") -> None:
    """Register ``attnflow [group] <name>`` as the command generated from the flow ``target`` ("module:function"),
    with ``options()`` giving ``flow_command``'s keyword arguments (prepare, show, extras) when it is built."""
    LAZY[(group, name)] = LazyFlowCommand(name, target, options, group)


def load(name: str, group: str = "") -> Any:
    """The built (click) command of a lazily registered flow command."""
    return LAZY[(group, name)].load()


class FlowGroup(TyperGroup):
    """A command group whose lazily registered flow commands are listed with their summaries and built on use."""

    key = ""  # the group's key in LAZY ("" = the root)

    def _lazy(self) -> dict[str, LazyFlowCommand]:
        return {name: c for (group, name), c in LAZY.items() if group == self.key}

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        lazy = self._lazy()
        if cmd_name in lazy and cmd_name not in self.commands:
            return lazy[cmd_name].placeholder()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy()})

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        lazy = self._lazy()
        if name in lazy and name not in self.commands:
            cmd = lazy[name].load()
        return name, cmd, rest


def flow_group(key: str) -> type[FlowGroup]:
    """The ``cls`` of a ``typer.Typer`` sub-app holding lazily registered flow commands under ``key``."""
    return type(f"FlowGroup_{key}", (FlowGroup,), {"key": key})
