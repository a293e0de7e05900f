"""`attnflow vlm-eval`: attention patches x image benchmarks on a vision-language model (generated from the flow);
the patches, benchmarks, user data source and model config are validated before any server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.vlm import plan_vlm_request

    p = call.params
    plan_vlm_request.fn(p["model"], p["components"], p["tasks"], p["seeds"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow
    from tasks.report import to_markdown

    typer.echo(to_markdown(out["table"]))
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("vlm-eval", "flows.vlm_eval:vlm_eval", lambda: {"prepare": check, "show": show})
