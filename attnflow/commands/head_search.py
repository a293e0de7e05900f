"""`attnflow head-search`: find the heads a patch should act on; the head set lands in MLflow as heads.json, usable
as ``--param heads=mlflow:<run_id>/heads.json``. Generated from the flow; its options follow the flow's parameters."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.head_search import plan_search

    p = call.params
    if not p["gammas"] or min(p["gammas"]) <= 0:
        raise ValueError(f"--gammas {','.join(map(str, p['gammas']))}: give positive numbers, e.g. 1.5,2,3,4")
    plan_search.fn(p["model"], p["method"], p["task"], p["params"], p["layers"], p["objective"], p["trial_gamma"],
                   p["trust_remote_code"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    heads = ",".join(f"{lay}:{h}" for lay, h in out["heads"]) or "none"
    typer.echo(f"selected heads: {heads}" + (f"  gamma={out['gamma']}" if out.get("gamma") else ""))
    typer.echo(f"use them with: --param heads={out['ref']}")
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("head-search", "flows.head_search:head_search", lambda: {"prepare": check, "show": show})
