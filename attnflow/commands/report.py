"""`attnflow report`: the side-by-side comparison of an experiment's runs, logged to MLflow and printed (generated
from the `report` flow)."""

from __future__ import annotations

import re
from typing import Any

import typer

from attnflow.flowcli import Call, lazy_flow_command


def check(call: Call) -> None:
    bad = [i for i in call.params["run_ids"] if not re.fullmatch(r"[0-9a-f]{32}", i)]
    if bad:
        raise ValueError(f"--run-ids: {', '.join(map(repr, bad))} is not an MLflow run id (32 hex characters)")


def show(out: dict[str, Any], call: Call) -> None:
    from attnflow.cli import fail
    from attnflow.output import print_mlflow

    p = call.params
    if not out["n_runs"]:
        fail(f"no finished evaluation runs in experiment {p['experiment']!r}"
             + (f" for model {p['model']!r}" if p["model"] else "") + (" among the given runs" if p["run_ids"] else ""))
    print_mlflow(p["experiment"], out["run_id"])  # the flow printed the report (its ± is a 95% CI, as it says)


def register(app: typer.Typer) -> None:
    lazy_flow_command("report", "flows.report:report", lambda: {"prepare": check, "show": show})
