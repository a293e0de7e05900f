"""`attnflow report`: the side-by-side comparison of an experiment's runs, logged to MLflow and printed."""

from __future__ import annotations

import re
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        experiment: str = typer.Option("compare", help="MLflow experiment to report on."),
        run_ids: list[str] = typer.Option([], "--run-ids", help="Comma-separated run ids (a comparison's parent run "
                                          "stands for its evaluation runs); default: every run of the experiment."),
        model: Optional[str] = typer.Option(None, help="Only runs of this model (short name, e.g. demo-lm)."),
        baseline: str = typer.Option("baseline", help="Component the deltas are computed against."),
        log: bool = typer.Option(True, "--log/--no-log", help="Log the report to MLflow as a run."),
    ) -> None:
        """Components x tasks with 95% CIs across seeds and deltas vs baseline, per component version (MLflow)."""
        from attnflow.cli import fail, run_flow, split_list

        ids = split_list(run_ids)
        bad = [i for i in ids if not re.fullmatch(r"[0-9a-f]{32}", i)]
        if bad:
            fail(f"--run-ids: {', '.join(map(repr, bad))} is not an MLflow run id (32 hex characters)")
        from flows.report import report as flow

        out = run_flow(flow, experiment=experiment, run_ids=ids, model=model, baseline=baseline, log=log)
        if not out["n_runs"]:
            fail(f"no finished evaluation runs in experiment {experiment!r}"
                 + (f" for model {model!r}" if model else "") + (" among the given runs" if ids else ""))
