"""`attnflow run <flow> --param k=v`: run any flow in flows/ by its Prefect name."""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Any

import typer


def discover_flows() -> dict[str, Any]:
    """Prefect flow objects defined in the modules of ``flows/``, by flow name."""
    from prefect import Flow

    import flows

    found: dict[str, Any] = {}
    for mod in pkgutil.iter_modules(flows.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"flows.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, Flow) and obj.fn.__module__ == module.__name__:
                found[obj.name] = obj
    return found


#: old flow names still accepted by ``attnflow run`` (deprecated)
RENAMED = {"export": "export-onnx"}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        flow: str = typer.Argument(..., help="Flow name (attnflow flows lists them)."),
        param: list[str] = typer.Option([], "--param", "-p", help="Flow parameter key=value; values parse as JSON "
                                        "when they can ('[0,1]', '3', 'true'), else as strings."),
    ) -> None:
        """Run any attnflow flow with parameters (the same flows the Prefect deployments run)."""
        from attnflow.cli import fail, guarded, run_flow, show_result
        from registry.specs import parse_kv

        flows_ = discover_flows()
        if flow in RENAMED:
            typer.secho(f"note: flow {flow!r} is now {RENAMED[flow]!r}; the old name will go", err=True)
            flow = RENAMED[flow]
        if flow not in flows_:
            fail(f"unknown flow {flow!r}; flows: {', '.join(sorted(flows_))}")
        params = {k: _value(v) for k, v in guarded(lambda: parse_kv(param)).items()}
        valid = set(flows_[flow].parameters.properties)
        unknown = sorted(set(params) - valid)
        if unknown:
            fail(f"flow {flow!r} has no parameter(s) {', '.join(unknown)}; parameters: {', '.join(sorted(valid))}")
        show_result(run_flow(flows_[flow], **params))

    @app.command("flows")
    def list_flows(
        name: str = typer.Argument("", help="Show this flow's parameters (type, default, description)."),
    ) -> None:
        """List the flows `attnflow run` can start (one line each), or one flow's parameters."""
        from attnflow.cli import fail
        from attnflow.flowcli import default_text, flow_options

        found = discover_flows()
        if not name:
            for n, f in sorted(found.items()):
                typer.echo(f"{n:24s} {(f.description or '').splitlines()[0] if f.description else ''}")
            typer.echo("\n`attnflow flows <name>` lists a flow's parameters; `attnflow run <name> --param key=value`.")
            return
        if name not in found:
            fail(f"unknown flow {name!r}; flows: {', '.join(sorted(found))}")
        for o in flow_options(found[name]):
            shown = default_text(o)
            kind = "|".join(o.choices) if o.choices else o.kind
            where = f"{o.parent}." if o.parent else ""
            default = "(required)" if o.required else f"= {shown}" if shown else ""
            typer.echo(f"{where + o.param:20s} {kind:6s} {default}")
            typer.echo(f"{'':20s} {o.help}")
