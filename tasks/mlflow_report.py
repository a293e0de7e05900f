"""MLflow side of ``attnflow report``: read the evaluation runs of an experiment, log the report as a run.

Reading goes through the same ``client()`` as logging (so an unreachable server gives the same clear error);
the aggregation and rendering are plain functions in ``tasks/report.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from prefect import task

import registry
from infra.settings import settings
from tasks import plots
from tasks.report import flag_disagreements, report_html, report_markdown, seedless
from tasks.tracking import RETRY, _flow_tags, client, experiment_id, metric_key
from tasks.runs import ended
#: tags that together say "the same computation": weights, component (code + params), task (code + params), data
IDENTITY = ("attnflow.model_fingerprint", "attnflow.fingerprint", "attnflow.task_fingerprint",
            "attnflow.data_fingerprint", "attnflow.fit.fingerprint")
EVALUATION_FILTER = "tags.`attnflow.component` LIKE '%'"


@task(**RETRY, task_run_name="collect runs of {experiment}")
def evaluation_runs(experiment: str, run_ids: list[str] | None = None, model: str | None = None) -> list[dict]:
    """The finished evaluation runs of ``experiment`` (or of the given runs: a comparison's parent run stands for its
    children) as plain records; a repeated (model, component version + code, task, seed) keeps its latest run.
    Runs of one fingerprint (same weights, component, task and data) whose metrics differ are flagged: each record
    lists them under ``disagreements``."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments())
        raise ValueError(f"no MLflow experiment named {experiment!r} at {settings().tracking_uri}; "
                         f"experiments: {', '.join(names) or '-'}")
    runs = []
    if run_ids:
        for rid in run_ids:
            try:
                run = c.get_run(rid)
            except mlflow.exceptions.MlflowException:
                raise ValueError(f"run {rid!r} not found at {settings().tracking_uri}") from None
            if run.info.experiment_id != exp.experiment_id:
                raise ValueError(f"run {rid!r} belongs to another experiment (id {run.info.experiment_id})")
            if "attnflow.component" in run.data.tags:
                runs.append(run)
            else:
                runs += _search(c, exp.experiment_id, f"{EVALUATION_FILTER} and tags.mlflow.parentRunId = '{rid}'")
    else:
        runs = _search(c, exp.experiment_id, EVALUATION_FILTER)
    finished = [(run, _record(run)) for run in runs]
    finished = [(run, rec) for run, rec in finished
                if run.info.status == "FINISHED" and not (model and rec["model"] != model)]
    flag_disagreements([rec for _, rec in finished])
    latest: dict[tuple, dict] = {}
    for run, rec in finished:
        key = (rec["model"], rec["component"], rec["version"], rec["code_fingerprint"], rec["task"], rec["seed"])
        if key not in latest or rec["start_time"] > latest[key]["start_time"]:
            latest[key] = rec
    kept, same = [], {}  # one computation counts once, however many runs logged it (never averaged with itself)
    for rec in sorted(latest.values(), key=lambda r: (r["start_time"], r["run_id"])):
        if rec["identity"]:
            same[rec["identity"]] = rec
        else:
            kept.append(rec)
    return sorted(kept + list(same.values()), key=lambda r: (r["start_time"], r["run_id"]))


def _search(c: MlflowClient, experiment_id: str, filter_string: str) -> list[Any]:
    out, token = [], None
    while True:
        page = c.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _record(run: Any) -> dict[str, Any]:
    tags, name = run.data.tags, run.data.tags.get("attnflow.task", "")
    bench_label = (run.info.run_name or "").partition(" | ")[2] or name
    directions: dict[str, bool] = {}
    for ref in (f"{name}@{tags.get('attnflow.task_version', '')}".rstrip("@"), name):
        try:
            directions = registry.get(ref, family="benchmark").cls.metrics
            break
        except LookupError:
            continue
    metrics = {k.partition("/")[2]: v for k, v in run.data.metrics.items() if k.startswith(f"{name}/")}
    metrics = {k: v for k, v in metrics.items() if (k in directions if directions else not k.startswith("n_"))}
    return {
        "run_id": run.info.run_id, "start_time": run.info.start_time,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "component": tags.get("attnflow.component_label") or tags["attnflow.component"],
        "name": tags["attnflow.component"], "version": tags.get("attnflow.component_version", ""),
        "code_fingerprint": tags.get("attnflow.code_fingerprint", ""), "model": tags.get("attnflow.model", ""),
        "task": seedless(bench_label), "seed": tags.get("attnflow.seed", run.data.params.get("task.seed", "-")),
        "metrics": metrics, "higher_is_better": {k: directions.get(k, True) for k in metrics},
        "identity": "|".join(tags.get(k, "") for k in IDENTITY) if all(tags.get(k) for k in IDENTITY[:3]) else "",
    }


@task(**RETRY, task_run_name="log report")
def log_report(experiment: str, tables: list[dict[str, Any]], source_run_ids: list[str]) -> dict[str, Any]:
    """The report as a run of ``experiment``: report.md (also the run description), report.html (figures inlined),
    report.json and the figures as PNG; returns the run id and the Markdown."""
    figures = {}
    for i, t in enumerate(tables):
        suffix = f"-{metric_key(t['model']).replace('/', '_')}" if len(tables) > 1 else ""
        for kind, make in (("values", plots.comparison_bars), ("deltas", plots.delta_bars)):
            if kind == "deltas" and not t.get("deltas"):
                continue
            fig = make(t)
            figures[f"figures/{kind}{suffix}.png"] = plots.to_png(fig)
            plots.close(fig)
    markdown = report_markdown(experiment, tables, figures)
    c = client()
    run = c.create_run(experiment_id(experiment), run_name=f"report {experiment}",
                       tags={**_flow_tags(), "attnflow.kind": "report", "mlflow.note.content": markdown[:5000],
                             "attnflow.report_sources": ",".join(source_run_ids)[:5000]})
    rid = run.info.run_id
    with ended(rid, finish=False):  # an error while logging ends the run FAILED, not RUNNING
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "report.md").write_text(markdown)
            (root / "report.html").write_text(report_html(experiment, tables, figures))
            (root / "report.json").write_text(json.dumps(tables, indent=1, default=str))
            for name, png in figures.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(png)
            c.log_artifacts(rid, str(root))
        c.set_terminated(rid)
    return {"run_id": rid, "markdown": markdown, "figures": sorted(figures)}
