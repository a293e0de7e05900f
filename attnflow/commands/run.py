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


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def print_rows(rows: list[dict[str, Any]]) -> None:
    """A list of row dicts as a table (columns in first-seen order; floats to 4 significant digits)."""
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(k for row in rows for k in row))
    t = Table(show_lines=False)
    for col in columns:
        t.add_column(str(col))
    for row in rows:
        t.add_row(*("-" if row.get(c) is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                    for c in columns))
    Console(width=200).print(t)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        flow: str = typer.Argument(..., help="Flow name (attnflow flows lists them)."),
        param: list[str] = typer.Option([], "--param", "-p", help="Flow parameter key=value; values parse as JSON "
                                        "when they can ('[0,1]', '3', 'true'), else as strings."),
    ) -> None:
        """Run any attnflow flow with parameters (the same flows the Prefect deployments run)."""
        from attnflow.cli import fail, guarded, run_flow
        from registry.specs import parse_kv

        flows_ = discover_flows()
        if flow not in flows_:
            fail(f"unknown flow {flow!r}; flows: {', '.join(sorted(flows_))}")
        params = {k: _value(v) for k, v in guarded(lambda: parse_kv(param)).items()}
        valid = set(flows_[flow].parameters.properties)
        unknown = sorted(set(params) - valid)
        if unknown:
            fail(f"flow {flow!r} has no parameter(s) {', '.join(unknown)}; parameters: {', '.join(sorted(valid))}")
        result = run_flow(flows_[flow], **params)
        table = result.get("table") if isinstance(result, dict) else None
        if isinstance(table, dict) and "columns" in table:  # a comparison table (compare, retrieval-heads)
            from attnflow.cli import print_table

            print_table(table)
        elif isinstance(table, list) and table and all(isinstance(row, dict) for row in table):
            print_rows(table)  # the studies' row tables (sink-emergence, instability-proxies, arch-compare)

    @app.command("flows")
    def list_flows() -> None:
        """List the flows `attnflow run` can start, with their parameters."""
        for name, f in sorted(discover_flows().items()):
            params = ", ".join(f.parameters.properties)
            typer.echo(f"{name:24s} {(f.description or '').splitlines()[0] if f.description else ''}")
            typer.echo(f"{'':24s} parameters: {params}")
