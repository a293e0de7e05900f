"""`attnflow generate-images`: prompts x diffusion components x seeds on a text-to-image model (generated from the
flow); the model folder, prompts, components and metrics are validated before any server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.diffusion import plan_images

    p = call.params
    plan_images.fn(p["model"], p["prompts"], p["prompt_file"] or None, p["components"], p["seeds"], p["steps"],
                   p["cfg_scale"], p["maps"], p["metrics"], p["clip_model"] or None)


def show(out: dict[str, Any], call: Call) -> None:
    """The per-stack summary, the comparison over seeds, the MLflow link (inpaint shows the same)."""
    from attnflow.output import print_mlflow
    from tasks.image_compare import comparison_markdown
    from tasks.image_log import summary_markdown

    typer.echo(summary_markdown(out["summary"]))
    typer.echo("")
    typer.echo(comparison_markdown(out["comparison"]))
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("generate-images", "flows.generate_images:generate_images",
                      lambda: {"prepare": check, "show": show})
