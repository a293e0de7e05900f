"""`attnflow train-lm`: train a small LM from a preset (the demo model's recipe), generated from its flow."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.lm import resolve_preset

    p = call.params
    resolve_preset.fn(p["preset"], {**p["overrides"], **({"train.steps": p["steps"]} if p["steps"] else {})},
                      p["corpus"], p["corpus_weight"], p["corpus_field"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(f"model: {out['model_dir']}")
    for k, v in sorted(out["metrics"].items()):
        typer.echo(f"  {k:60s} {v:.4f}")
    print_mlflow(call.params["experiment"], out["mlflow_run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("train-lm", "flows.train_lm:train_lm", lambda: {"prepare": check, "show": show})
