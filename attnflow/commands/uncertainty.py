"""`attnflow uncertainty`: SAR and its baselines on a QA file, AUROC / AUPRC of each for predicting the model's
errors (generated from the flow); methods, sampling settings and the QA file's fields are checked before any server
starts."""

from __future__ import annotations

from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    from tasks.generations import sampling_config
    from tasks.models import check_model
    from tasks.uncertainty import plan_methods
    from tasks.uncertainty_data import read_qa

    p = call.params
    plan_methods.fn(p["methods"])
    sampling_config(p["n_samples"], p["temperature"], p["top_p"], p["top_k"], p["max_new_tokens"], p["seed"],
                    p["stop"], p["batch_size"], p["shard_size"], p["template"], p["chat"])
    read_qa(p["data"], p["question_field"], p["answers_field"], p["separator"], p["n_questions"])
    check_model(p["model"], trust_remote_code=p["trust_remote_code"])


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.output import print_mlflow

    typer.echo(out["table"])
    typer.echo(f"accuracy of the greedy answer: {out['accuracy']:.3f}")
    print_mlflow(call.params["experiment"], out["run_id"])


def register(app: typer.Typer) -> None:
    lazy_flow_command("uncertainty", "flows.uncertainty:uncertainty", lambda: {"prepare": check, "show": show})
