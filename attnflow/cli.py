"""The ``attnflow`` command line. Commands run Prefect flows; bad input is reported before any flow starts.

Feature modules may add commands by defining ``register(app)`` in ``attnflow/commands/<name>.py``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from typing import Any, Callable, Optional

import typer

from attnflow.flowcli import FlowGroup

app = typer.Typer(
    name="attnflow",
    cls=FlowGroup,
    help="Attention research methods as versioned components: Prefect flows, MLflow tracking, ONNX export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: set by ``--debug`` (or ATTNFLOW_DEBUG=1): tracebacks are shown; otherwise an error is its message alone
DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", envvar="ATTNFLOW_DEBUG",
                                     help="Show full tracebacks (attnflow's and failed Prefect task runs')."),
          verbose: bool = typer.Option(False, "--verbose", "-v", envvar="ATTNFLOW_VERBOSE",
                                       help="Show Prefect's own INFO logs on the console (always in the log file "
                                            "printed at the end).")) -> None:
    """Attention research methods as versioned components: Prefect flows, MLflow tracking, ONNX export."""
    from attnflow.output import VERBOSE

    DEBUG["on"] = debug
    VERBOSE["on"] = verbose


class _NoTraceback(logging.Filter):
    """Console log filter: a failed task's log line keeps its message; the traceback is left to ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not DEBUG["on"]:
            record.exc_info, record.exc_text = None, None
        return True


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported as one line, exit code 2."""
    from components.attention.session import UnsupportedModelError
    from components.attention.vision import UnsupportedVisionModelError
    from components.modeling import UnsupportedArchitectureError

    return (ValueError, LookupError, FileNotFoundError, UnsupportedArchitectureError, UnsupportedModelError,
            UnsupportedVisionModelError)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn user errors (bad names, params, paths) into a one-line message and exit code 2."""
    try:
        return fn()
    except _user_errors() as e:
        fail(str(e))


def option_name(param: str) -> str:
    """The command-line option that sets flow parameter ``param`` in the running command (``batch_size`` ->
    ``--batch-size``), read from the command's own Typer options; ``--param <name>`` for ``attnflow run``."""
    from typer.main import get_current_context  # Typer's own (vendored) click context

    ctx = get_current_context(silent=True)
    for p in (ctx.command.params if ctx else []):
        if p.name == param and getattr(p, "opts", None):
            return max(p.opts, key=len)
    if ctx and any(p.name == "param" for p in ctx.command.params) and ctx.command.name == "run":
        return f"--param {param}"
    return f"parameter {param!r}"


def check_params(flow_fn: Any, params: dict[str, Any]) -> None:
    """Validate a flow call's arguments against the flow's own parameter types (``flows/params.py``: the types the
    Prefect UI form and deployments use) in this process, before any Prefect server starts; a bad value fails
    here, naming its option."""
    import logging

    from prefect.exceptions import ParameterBindError, ParameterTypeError

    flows_logger = logging.getLogger("prefect.flows")  # validate_parameters logs the raw pydantic errors there
    disabled, flows_logger.disabled = flows_logger.disabled, True
    try:
        flow_fn.validate_parameters(params)
    except ParameterTypeError as e:
        problems = []
        for line in str(e).splitlines()[1:]:  # " - batch_size: Input should be greater than or equal to 1"
            loc, _, msg = line.strip().removeprefix("- ").partition(": ")
            name, _, field = loc.partition(".")
            value = params.get(name)
            if field and isinstance(value, dict) and field.split(".")[0] in value:  # a field of a model parameter
                name, value = f"{name}__{field.split('.')[0]}", value[field.split(".")[0]]
            shown = f" {value!r}" if value is not None or name in params else ""
            problems.append(f"{option_name(name)}{shown}: {msg[:1].lower()}{msg[1:]}")
        fail("; ".join(problems) or str(e))
    except ParameterBindError as e:
        fail(str(e))
    finally:
        flows_logger.disabled = disabled


def run_flow(flow_fn: Callable[..., Any], checked: bool = False, **params: Any) -> Any:
    """Check the parameters (no server yet; ``checked``: the caller did), run a Prefect flow with its log in a file
    (``attnflow.output.console``), exit non-zero if it failed."""
    if not checked:
        check_params(flow_fn, params)
    from attnflow.output import console
    from infra.ephemeral import guard_temporary_server

    guard_temporary_server()  # a temporary Prefect server stops with this process, even after kill -9
    with console(flow_fn.name, (_NoTraceback(),)):
        state = flow_fn(**params, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except _user_errors() as e:
            fail(str(e))
        except Exception as e:  # noqa: BLE001 - report any flow failure and exit 1
            typer.secho(f"flow {flow_fn.name!r} failed: {type(e).__name__}: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
    return state.result()


def print_table(table: dict[str, Any], full: dict[str, Any] | None = None) -> None:
    """A comparison table fitted to the terminal, its ``±`` explained; the whole table (``full``, when ``table`` is
    a summary of it) saved as Markdown, its path printed."""
    from attnflow.output import print_table as show
    from attnflow.output import save_table

    whole = full or table
    show(table, save_table(whole, whole.get("title") or "table"))


def show_result(out: Any, call: Any = None) -> None:
    """The default view of a flow's result: its table (comparison or rows), its verdict text, then the MLflow link."""
    from attnflow.output import print_mlflow, print_rows

    if not isinstance(out, dict):
        return
    table = out.get("table")
    if isinstance(table, dict) and "columns" in table:
        print_table(table, out.get("full_table"))
    elif isinstance(table, list) and table and all(isinstance(row, dict) for row in table):
        print_rows(table)  # the studies' row tables (sink-emergence, instability-proxies, arch-compare)
    elif isinstance(table, str):
        typer.echo(table)
    verdict = out.get("verdict")
    if isinstance(verdict, dict) and verdict.get("text"):  # retrieval-heads: the flow leaves it to its log
        typer.echo(verdict["text"])
    experiment = out.get("experiment") or (call.params.get("experiment") if call else None)
    if experiment and (out.get("run_id") or out.get("mlflow_run_id")):
        print_mlflow(experiment, out.get("run_id") or out.get("mlflow_run_id"))


def parse_ints(text: str, option: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; anything else is an error naming the option."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated integers, e.g. 0,1,2") from None


def split_list(values: list[str]) -> list[str]:
    from registry.specs import split_top_level

    return [item for v in values for item in split_top_level(v)]


# ---------------------------------------------------------------------------------------------------------------


@app.command()
def components(
    markdown: bool = typer.Option(False, "--markdown", help="Print the README methods table (Markdown)."),
    family: Optional[str] = typer.Option(None, help="Only this family (patch, benchmark, analyzer, ...)."),
    show: Optional[str] = typer.Option(None, help="Show one component's parameters and docstring."),
    all_versions: bool = typer.Option(False, "--all-versions", help="List every version, not only the newest."),
    update_docs: bool = typer.Option(False, "--update-docs",
                                     help="Rewrite the methods tables in README.md (by family) and docs/methods.md."),
) -> None:
    """List registered components: name, version, family, paper, summary."""
    import registry

    if update_docs:
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        infos = registry.latest()
        for path, table in ((root / "README.md", families_markdown(infos)), (root / "docs" / "methods.md",
                                                                              methods_markdown(infos))):
            head, rest = path.read_text().split(METHODS_START, 1)
            _, tail = rest.split(METHODS_END, 1)
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(f"{head}{METHODS_START}\n{table}\n{METHODS_END}{tail}")
            tmp.replace(path)
            typer.echo(f"updated {path}")
        return
    if show:
        typer.echo(guarded(lambda: registry.get(show)).describe())
        return
    infos = registry.all_components(family) if all_versions else registry.latest(family)
    if markdown:
        typer.echo(methods_markdown(infos))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="attnflow components")
    for col in ("name", "version", "family", "paper", "summary"):
        t.add_column(col, overflow="fold")
    for i in infos:
        t.add_row(i.name, i.version, i.family, i.paper or "-", i.summary)
    Console().print(t)


METHODS_START, METHODS_END = "<!-- methods:start -->", "<!-- methods:end -->"


def families_markdown(infos: list[Any]) -> str:
    """README's summary: one row per family with its components, generated from the registry."""
    by_family: dict[str, list[str]] = {}
    for i in infos:
        by_family.setdefault(i.family, []).append(f"`{i.name}`")
    lines = ["| family | components |", "|---|---|"]
    lines += [f"| {family} | {', '.join(names)} |" for family, names in by_family.items()]
    return "\n".join(lines)


def methods_markdown(infos: list[Any]) -> str:
    """docs/methods.md's table (component, family, version, paper, summary), generated from the registry."""
    lines = ["| component | family | version | paper | summary |", "|---|---|---|---|---|"]
    for i in infos:
        paper = f"[{i.paper}]({i.paper_url})" if i.paper_url else (i.paper or "-")
        lines.append(f"| `{i.name}` | {i.family} | {i.version} | {paper} | {i.summary} |")
    return "\n".join(lines)


def _load_command_modules() -> None:
    import attnflow.commands as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"attnflow.commands.{mod.name}")
        if hasattr(module, "register"):
            module.register(app)


_load_command_modules()


def main() -> None:
    """The ``attnflow`` entry point: an error is one line (its message first; exit 2 for bad input, 1 otherwise);
    ``--debug`` shows the traceback."""
    from infra.ephemeral import exit_on_signals

    exit_on_signals()  # SIGTERM/SIGHUP unwind like Ctrl-C: MLflow runs end KILLED, the temporary server stops
    try:
        app()
    except Exception as e:  # noqa: BLE001 - Typer has handled its own errors (usage, typer.Exit) already
        if DEBUG["on"]:
            raise
        bad_input = isinstance(e, _user_errors())
        typer.secho(f"error: {e}" if bad_input else f"error: {type(e).__name__}: {e}", fg=typer.colors.RED, err=True)
        typer.secho("(run with --debug for the traceback)", err=True)
        sys.exit(2 if bad_input else 1)


if __name__ == "__main__":
    main()
