"""`attnflow head-search`: find the heads a patch should act on, for any patch that declares a head search
(components/search.py); the head set lands in MLflow as heads.json, usable as
``--param heads=mlflow:<run_id>/heads.json``. Generated from the flow; its options follow the flow's parameters."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def grid_values(raw: list[str]) -> dict[str, list[str]]:
    """``--grid name=v1,v2`` (repeatable) -> {name: [v1, v2]}; the patch's search converts and checks the values."""
    from registry.specs import parse_kv

    return {k: [x.strip() for x in v.split(",") if x.strip()] for k, v in parse_kv(list(raw), "--grid").items()}


def check(call: Call) -> None:
    """The method, its parameters, the grid, the task and the candidate heads, before any server starts."""
    from tasks.head_search import plan_search

    p = call.params
    plan_search.fn(p["model"], p["method"], p["task"], p["params"], p["layers"], p["objective"], p["grid"],
                   p["trust_remote_code"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    heads = ",".join(f"{lay}:{h}" for lay, h in out["heads"]) or "none"
    refined = ", ".join(f"{k}={v}" for k, v in (out.get("refined") or {}).items())
    typer.echo(f"selected heads: {heads}" + (f"  {refined}" if refined else ""))
    typer.echo(f"use them with: --param heads={out['ref']}")
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("head-search", "flows.head_search:head_search",
                      lambda: {"prepare": check, "show": show, "convert_with": {"grid": grid_values}})
