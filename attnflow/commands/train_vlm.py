"""`attnflow train-vlm`: a LLaVA-style VLM around a frozen language model, trained on generated scenes (generated
from the flow); the language model's config, the sizes and the output folder are checked before any server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.train_vlm import plan_train_vlm

    p = call.params
    plan_train_vlm.fn(p["lm"], p["out"], p["image_size"], p["patch_size"], p["vision_hidden"], p["vision_heads"],
                      p["init_from"], p["adapter"], p["adapter_rank"], p["wings_layers"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    for s in out["stages"]:
        typer.echo(f"{s['stage']}: held-out loss {s['held_out_before']:.4f} -> {s['held_out_after']:.4f} "
                   f"({s['seconds']:.0f}s)")
    typer.echo(f"model: {out['model_dir']}")
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("train-vlm", "flows.train_vlm:train_vlm", lambda: {"prepare": check, "show": show})
