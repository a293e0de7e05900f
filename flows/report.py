"""report: the side-by-side view of an MLflow experiment's evaluation runs, logged back to MLflow.

collect evaluation runs -> table per model (components x tasks, mean and 95% CI across seeds, deltas vs
baseline) -> Markdown + HTML + figures -> a ``report <experiment>`` run in the same experiment.
"""

from __future__ import annotations

from typing import Any, Optional

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow

from flows.params import Experiment
from tasks.mlflow_report import evaluation_runs, log_report
from tasks.report import log_run_link, report_markdown, report_tables


@flow(name="report", log_prints=True)
def report(
    experiment: Experiment = "compare",
    run_ids: list[str] = [],  # noqa: B006 - a Prefect parameter default, never mutated
    model: Optional[str] = None,
    baseline: str = "baseline",
    log: bool = True,
) -> dict[str, Any]:
    """Compare every component version evaluated in an MLflow experiment: components x tasks with 95% confidence
    intervals across seeds and deltas vs the baseline, logged as a report run (Markdown, HTML, PNG).

    Args:
        experiment: MLflow experiment whose evaluation runs are compared (compare, evaluate, quickstart, ...).
        run_ids: Only these runs; a comparison's parent run stands for all its evaluation runs. Empty: all runs of
            the experiment (the latest run per component version, task and seed).
        model: Only runs of this model (its short name, as in the runs' attnflow.model tag).
        baseline: Component name the deltas are computed against.
        log: Log the report to MLflow as a run of the experiment (else only print it).
    """
    # 1. Collect the finished evaluation runs.
    records = evaluation_runs(experiment, run_ids or None, model)
    # 2. Aggregate per model: mean and 95% CI across seeds, deltas vs the baseline (paired by seed when possible).
    tables = report_tables(records, baseline=baseline)
    # 3. Render and log (report.md is also the run's description in the MLflow UI).
    if log and tables:
        logged = log_report(experiment, tables, [r["run_id"] for r in records])
        markdown, run_id = logged["markdown"], logged["run_id"]
    else:
        markdown, run_id = report_markdown(experiment, tables), None
    print(markdown)
    if run_id:
        log_run_link(run_id, experiment)
    return {"tables": tables, "markdown": markdown, "run_id": run_id, "n_runs": len(records)}


if __name__ == "__main__":
    report()
