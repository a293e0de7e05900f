"""`attnflow train-t2i`: the demo-t2i text-to-image model trained on generated shape scenes (generated from the flow);
the sizes, rates and the output folder are checked before any server starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.train_t2i import plan_train_t2i

    p = call.params
    plan_train_t2i.fn(p["out"], p["image_size"], list(p["channels"]), p["text_hidden"], p["heads"],
                      p["cfg_dropout"], p["ema_decay"], p["lr"], p["sample_steps"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(f"held-out loss {out['held_out_before']:.4f} -> {out['held_out_after']:.4f} ({out['seconds']:.0f}s)")
    typer.echo("samples: " + ", ".join(f"{k} {v:.2f}" for k, v in out["sample_scores"].items()))
    typer.echo(f"model: {out['model_dir']}")
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("train-t2i", "flows.train_t2i:train_t2i", lambda: {"prepare": check, "show": show})
