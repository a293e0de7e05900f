"""The ``attnflow`` command line. Commands run Prefect flows; bad input is reported before any flow starts.

Feature modules may add commands by defining ``register(app)`` in ``attnflow/commands/<name>.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import sys
from typing import Any, Callable, Iterator, Optional

import typer

app = typer.Typer(
    name="attnflow",
    help="Attention research methods as versioned components: Prefect flows, MLflow tracking, ONNX export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: set by ``--debug`` (or ATTNFLOW_DEBUG=1): tracebacks are shown; otherwise an error is its message alone
DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", envvar="ATTNFLOW_DEBUG",
                                     help="Show full tracebacks (attnflow's and failed Prefect task runs').")) -> None:
    """Attention research methods as versioned components: Prefect flows, MLflow tracking, ONNX export."""
    DEBUG["on"] = debug


class _NoTraceback(logging.Filter):
    """Console log filter: a failed task's log line keeps its message; the traceback is left to ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not DEBUG["on"]:
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _quiet_tracebacks() -> Iterator[None]:
    """While a flow runs from the CLI, Prefect's console handler prints messages without tracebacks (the API and
    the Prefect UI still get them)."""
    handlers = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    quiet = _NoTraceback()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)

def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input": reported as one line, exit code 2."""
    from components.attention.session import UnsupportedModelError
    from components.modeling import UnsupportedArchitectureError

    return (ValueError, LookupError, FileNotFoundError, UnsupportedArchitectureError, UnsupportedModelError)


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
            name = loc.split(".")[0]
            shown = f" {params[name]!r}" if name in params else ""
            problems.append(f"{option_name(name)}{shown}: {msg[:1].lower()}{msg[1:]}")
        fail("; ".join(problems) or str(e))
    except ParameterBindError as e:
        fail(str(e))
    finally:
        flows_logger.disabled = disabled


def run_flow(flow_fn: Callable[..., Any], **params: Any) -> Any:
    """Check the parameters (no server yet), run a Prefect flow, print where its results went, exit non-zero if it
    failed."""
    check_params(flow_fn, params)
    from infra.ephemeral import guard_temporary_server

    guard_temporary_server()  # a temporary Prefect server stops with this process, even after kill -9
    with _quiet_tracebacks():
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


def print_table(table: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=table.get("title"), show_lines=False)
    t.add_column("component", overflow="fold")  # fold, never cut to "…", in a narrow terminal
    t.add_column("version", overflow="fold")
    for col in table["columns"]:
        arrow = "↑" if table["higher_is_better"].get(col, True) else "↓"
        t.add_column(f"{col} {arrow}", justify="right", overflow="fold")
    for row in table["rows"]:
        cells = []
        for col in table["columns"]:
            c = table["cells"][row].get(col)
            cells.append("-" if c is None else f"{c['mean']:.4g}" + (f" ± {c['std']:.2g}" if c["n"] > 1 else ""))
        t.add_row(row, table["versions"].get(row, ""), *cells)
    console = Console()
    if not console.is_terminal:  # piped or logged: no terminal width to respect, print the table whole
        console = Console(width=max(console.width, 240))
    console.print(t)


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
    update_readme: bool = typer.Option(False, "--update-readme", help="Rewrite the methods table in README.md."),
) -> None:
    """List registered components: name, version, family, paper, summary."""
    import registry

    if update_readme:
        from pathlib import Path

        readme = Path(__file__).resolve().parents[1] / "README.md"
        head, rest = readme.read_text().split("<!-- methods:start -->", 1)
        _, tail = rest.split("<!-- methods:end -->", 1)
        table = methods_markdown(registry.latest())
        readme.write_text(f"{head}<!-- methods:start -->\n{table}\n<!-- methods:end -->{tail}")
        typer.echo(f"updated {readme}")
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


def methods_markdown(infos: list[Any]) -> str:
    """The README methods table, generated from the registry."""
    lines = ["| component | family | version | paper | summary |", "|---|---|---|---|---|"]
    for i in infos:
        paper = f"[{i.paper}]({i.paper_url})" if i.paper_url else (i.paper or "-")
        lines.append(f"| `{i.name}` | {i.family} | {i.version} | {paper} | {i.summary} |")
    return "\n".join(lines)


@app.command()
def evaluate(
    model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
    component: str = typer.Option("baseline", help="Component name or name@version."),
    param: list[str] = typer.Option([], "--param", "-p", help="Component parameter key=value (repeatable)."),
    task: str = typer.Option("kv_retrieval", help="Task (benchmark) name or spec."),
    task_param: list[str] = typer.Option([], "--task-param", help="Task parameter key=value (repeatable)."),
    seeds: str = typer.Option("0", help="Comma-separated data seeds."),
    batch_size: int = typer.Option(16),
    experiment: str = typer.Option("evaluate", help="MLflow experiment."),
    dtype: str = typer.Option("float32"),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
) -> None:
    """Evaluate one component on one task (runs the `evaluate` flow)."""
    from registry.specs import Spec, parse, parse_kv
    from tasks.plan import plan_request

    def prepare():
        params, tparams = parse_kv(param), parse_kv(task_param, "--task-param")
        comp, bench = parse(component), parse(task)
        seed_list = parse_ints(seeds)
        plan_request.fn(model, [Spec(comp.name, comp.version, {**comp.params, **params}).text()],
                        [Spec(bench.name, bench.version, {**bench.params, **tparams}).text()], seed_list,
                        trust_remote_code=trust_remote_code)
        return params, tparams, seed_list

    params, tparams, seed_list = guarded(prepare)
    from flows.evaluate import evaluate as evaluate_flow

    out = run_flow(evaluate_flow, model=model, component=component, params=params, task=task,
                   task_params=tparams, seeds=seed_list, batch_size=batch_size, experiment=experiment,
                   dtype=dtype, trust_remote_code=trust_remote_code)
    print_table(out["table"])


@app.command()
def compare(
    model: str = typer.Option("demo", help="Hub id, local model directory, or 'demo'."),
    components: list[str] = typer.Option([], "--components", "-c",
                                         help="Comma-separated component specs, e.g. baseline,zerotuning(gamma=4)."),
    tasks: list[str] = typer.Option([], "--tasks", "-t", help="Comma-separated task specs."),
    preset: Optional[str] = typer.Option(None, help="A preset from registry/presets (or a YAML path)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated data seeds (default 0)."),
    batch_size: int = typer.Option(16),
    experiment: str = typer.Option("compare", help="MLflow experiment."),
    dtype: str = typer.Option("float32"),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
) -> None:
    """Compare components on tasks for one model (runs the `compare` flow)."""
    from flows.compare import DEFAULT_COMPONENTS, DEFAULT_TASKS
    from flows.params import ComparisonPreset
    from registry.specs import load_preset
    from tasks.plan import plan_request

    def prepare():
        cfg = load_preset(preset, ComparisonPreset) if preset else {}
        comps = split_list(components) or cfg.get("components") or DEFAULT_COMPONENTS
        tks = split_list(tasks) or cfg.get("tasks") or DEFAULT_TASKS
        seed_list = parse_ints(seeds) if seeds else cfg.get("seeds") or [0]
        plan_request.fn(model, comps, tks, seed_list, trust_remote_code=trust_remote_code)
        return comps, tks, seed_list

    comps, tks, seed_list = guarded(prepare)
    from flows.compare import compare as compare_flow

    out = run_flow(compare_flow, model=model, components=comps, tasks=tks, seeds=seed_list,
                   batch_size=batch_size, experiment=experiment, dtype=dtype, trust_remote_code=trust_remote_code)
    print_table(out["table"])


@app.command()
def quickstart(
    model: str = typer.Option("", help="Model to tour (default: the preset's, smollm2-135m; 'demo' for the "
                                       "bundled toy model)."),
    preset: str = typer.Option("", help="Quickstart preset (registry/presets/<name>.yaml or a path; default "
                                        "quickstart, or quickstart-demo for --model demo)."),
    experiment: str = typer.Option("quickstart", help="MLflow experiment."),
) -> None:
    """Offline tour on a real model: sink profile, retrieval heads, then baseline vs ZeroTuning, ACT and head
    masking, in one table and in MLflow."""
    from flows.quickstart import preset_for

    guarded(lambda: preset_for(model or None, preset or None))
    from flows.quickstart import quickstart as flow

    out = run_flow(flow, model=model, preset=preset, experiment=experiment)
    print_table(out["table"])


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
