"""`attnflow scbench`: SCBench's shared-context protocol (multi-turn and multi-request) for KV-cache presses
(generated from the flow); presses, ratios, tasks (user files row by row) and the model are validated before any
server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.kv_sweep import plan_presses
    from tasks.models import check_model
    from tasks.scbench import plan_tasks

    p = call.params
    plan_presses.fn(p["presses"], p["ratios"])
    plan_tasks.fn(p["tasks"], p["modes"])
    check_model(p["model"], trust_remote_code=p["trust_remote_code"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(out["table"])
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("scbench", "flows.scbench:scbench", lambda: {"prepare": check, "show": show})
