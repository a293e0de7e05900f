"""`attnflow kv-sweep`: KV-cache presses x compression ratios x tasks on one model (generated from the flow); the
presses, ratios, tasks, query mode and patch are validated before any server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.kv_sweep import check_sweep_modes, plan_presses
    from tasks.plan import plan_request

    p = call.params
    plan_presses.fn(p["presses"], p["ratios"])
    plan = plan_request.fn(p["model"], [p.get("patch") or "baseline"], p["tasks"], [0],
                           trust_remote_code=p["trust_remote_code"])
    check_sweep_modes.fn(plan.benchmarks, p.get("query_aware", False),
                         plan.components[0] if p.get("patch") else None)


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(out["table"])
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("kv-sweep", "flows.kv_sweep:kv_sweep", lambda: {"prepare": check, "show": show})
