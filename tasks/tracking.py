"""MLflow logging: published component versions, one run per evaluation, the comparison as table + figure.

Everything goes through ``MlflowClient`` with explicit run ids (no thread-local "active run"), so tasks can run
in any thread or process. Logging tasks retry with backoff; evaluation results themselves live in Prefect's
result store, so a failed log loses nothing and a re-run re-logs from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import registry
from infra.settings import settings
from registry import publish as publisher
from tasks import plots
from tasks.io import write_rows
from tasks.report import to_csv_rows, to_markdown
from tasks.retry import transient

RETRY = dict(retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=transient, cache_policy=NO_CACHE)


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer (logging tasks retry, then the flow fails with this message)."""


def client() -> MlflowClient:
    uri = settings().tracking_uri
    if uri.startswith(("http://", "https://")):
        check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Raise TrackingUnavailable when nothing answers at ``uri`` (any HTTP answer, even an error, counts)."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()  # noqa: S310 - tracking URI
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is not reachable ({reason}). Nothing computed is lost: evaluation results "
            f"stay in Prefect's result store ({settings().results_dir}); once the server is back, re-run the same "
            "request and they are logged from the cache (or `attnflow up` to restart the local stack).") from None


def artifact_root() -> str | None:
    s = settings()
    return s.artifact_root.as_uri() if s.uses_local_mlflow else None


def ui_link(experiment: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment's runs table (``#/experiments/<id>/runs``; MLflow 3 otherwise opens an
    experiment on its overview tab), or of one run (``.../runs/<run_id>``). A local store (sqlite, files) gets the
    address ``mlflow ui`` / ``attnflow up`` serve it on (port 5000). None when the experiment does not exist."""
    uri = settings().tracking_uri
    try:
        exp = client().get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - a link is a convenience; the runs are logged either way
        return None
    if exp is None:
        return None
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp.experiment_id}/runs" + (f"/{run_id}" if run_id else "")


#: MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI overview)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    root = artifact_root()
    try:
        return c.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException:
        return c.get_experiment_by_name(name).experiment_id


def metric_key(text: str) -> str:
    """An MLflow-legal metric name: ``kv_retrieval(n_pairs=4)/accuracy`` -> ``kv_retrieval.n_pairs_4/accuracy``."""
    text = text.replace("(", ".").replace(")", "").replace(", ", ".").replace(",", ".").replace("=", "_")
    return "".join(ch if ch.isalnum() or ch in "_-./: " else "_" for ch in text)[:250]


@lru_cache(maxsize=1)
def git_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def process_tags() -> dict[str, str]:
    """The process that owns a run (host, PID and its start time): a RUNNING run whose process is gone is an
    orphan, marked KILLED by ``tasks.runs.settle``."""
    return _process_tags(os.getpid())  # keyed by PID: a forked worker process gets its own


@lru_cache(maxsize=8)
def _process_tags(pid: int) -> dict[str, str]:
    import psutil

    return {"attnflow.host": socket.gethostname(), "attnflow.pid": str(pid),
            "attnflow.pid_started": f"{psutil.Process(pid).create_time():.2f}"}


def _flow_tags() -> dict[str, str]:
    tags = {"attnflow.git_commit": git_commit(), "mlflow.source.git.commit": git_commit().removesuffix("-dirty"),
            **process_tags()}
    run_id = flow_run.get_id()
    if run_id:
        tags["attnflow.prefect_flow_run_id"] = str(run_id)
        tags["attnflow.prefect_flow"] = str(flow_run.get_flow_name() or "")
    return tags


def component_tags(comp: dict[str, Any], versions: dict[str, str]) -> dict[str, str]:
    """The standard tags of a run about one component (a ``tasks.evaluate.component_record``): flow and git tags,
    name, version, fingerprints, paper, label and the published registry version."""
    prompt = {"attnflow.prompt": comp["prompt"]["spec"], "attnflow.prompt_fingerprint": comp["prompt"]["fingerprint"]} \
        if comp.get("prompt") else {}
    return {
        **_flow_tags(), **prompt,
        "attnflow.component": comp["name"], "attnflow.component_version": comp["version"],
        "attnflow.fingerprint": comp["fingerprint"], "attnflow.code_fingerprint": comp["code_fingerprint"],
        "attnflow.paper": comp["paper"] or "", "attnflow.component_label": comp["label"],
        "attnflow.registry_version": versions.get(f"{comp['name']}@{comp['version']}", ""),
    }


@task(**RETRY, task_run_name="publish components")
def publish_components(refs: list[str]) -> dict[str, str]:
    """Publish each component version once to the MLflow model registry; returns {ref: model version}."""
    c = client()
    out = {}
    for ref in dict.fromkeys(refs):
        info = registry.get(ref)
        out[info.ref] = str(publisher.publish(info, c, artifact_root()).version)
    return out


@task(**RETRY, task_run_name="start run {run_name}")
def start_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create a (parent) run and return its id."""
    c = client()
    run = c.create_run(experiment_id(experiment), run_name=run_name, tags={**_flow_tags(), **tags})
    c.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


@task(**RETRY, task_run_name="finish run")
def finish_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


@task(**RETRY, task_run_name="log {result[component][label]} / {result[benchmark][label]}")
def log_evaluation(result: dict[str, Any], experiment: str, parent_run_id: str | None,
                   versions: dict[str, str], seed: int | None = None) -> str:
    """One MLflow run per (component, benchmark): tags, params, metrics, examples and breakdown figures."""
    c = client()
    comp, bench = result["component"], result["benchmark"]
    tags = {
        **component_tags(comp, versions),
        "attnflow.model": result["model"], "attnflow.model_fingerprint": result["model_fingerprint"],
        "attnflow.task": bench["name"], "attnflow.task_version": bench["version"],
        "attnflow.task_fingerprint": bench["fingerprint"],
    }
    if result.get("data_fingerprint"):  # sha256 of the prepared rows the metrics were computed on
        tags["attnflow.data_fingerprint"] = result["data_fingerprint"]
    if seed is not None:
        tags["attnflow.seed"] = str(seed)
    for k, v in (result.get("fit") or {}).items():  # fitted components: fingerprint and summary of the state
        tags[f"attnflow.fit.{k}"] = str(v)[:5000]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    exp = experiment_id(experiment)
    key = result_key(result["model_fingerprint"], comp, bench["fingerprint"], result["metrics"], result["seconds"])
    tags.update(cached_tags(c, exp, key))
    run = c.create_run(exp, run_name=f"{comp['label']} | {bench['label']}", tags=tags)
    rid = run.info.run_id
    from tasks.runs import ended

    with ended(rid):
        _log_evaluation_body(c, rid, result, comp, bench)
    return rid


def _log_evaluation_body(c: MlflowClient, rid: str, result: dict[str, Any], comp: dict[str, Any],
                         bench: dict[str, Any]) -> None:
    params = [Param(k, str(v)[:6000]) for k, v in comp["params"].items()]
    params += [Param(f"task.{k}", str(v)[:6000]) for k, v in bench["params"].items()]
    params += [Param("model", result["model"])]
    metrics = [Metric(f"{bench['name']}/{k}", float(v), 0, 0) for k, v in result["metrics"].items()]
    metrics.append(Metric("eval_seconds", float(result["seconds"]), 0, 0))
    c.log_batch(rid, metrics=metrics, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        if result["examples"]:
            write_rows(result["examples"], Path(tmp) / "examples.parquet")
            c.log_artifact(rid, str(Path(tmp) / "examples.parquet"))
        for name, rows in result["breakdowns"].items():
            c.log_dict(rid, rows, f"breakdowns/{name}.json")
            spec = result["figures"].get(name)
            if spec:
                fig = plots.breakdown_figure(name, spec, rows, f"{comp['label']} | {bench['label']}")
                c.log_figure(rid, fig, f"figures/{name}.png")
                plots.close(fig)


def result_key(model_fingerprint: str, comp: dict[str, Any], task_fingerprint: str, metrics: dict[str, Any],
               seconds: float) -> str:
    """Identity of one computed result: the same key means the same computation served again from Prefect's
    cache (a fresh computation differs at least in its measured seconds)."""
    parts = [model_fingerprint, comp["fingerprint"], comp["code_fingerprint"], task_fingerprint,
             {k: float(v) for k, v in metrics.items()}, float(seconds)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_tags(c: MlflowClient, experiment_id: str, key: str) -> dict[str, str]:
    """Tags of a run logging the result ``key``: ``attnflow.cached`` is "true" when a run of this experiment
    already logged the same computation (a cached re-run), with ``attnflow.cached_from`` = that first run."""
    tags = {"attnflow.result_key": key, "attnflow.cached": "false"}
    first = c.search_runs([experiment_id], f"tags.`attnflow.result_key` = '{key}'", max_results=1,
                          order_by=["attributes.start_time ASC"])
    if first:
        tags.update({"attnflow.cached": "true", "attnflow.cached_from": first[0].info.run_id})
    return tags


@task(**RETRY, task_run_name="log comparison")
def log_comparison(run_id: str, table: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """The comparison as a table artifact (JSON/CSV/Markdown) and a bar plot on the parent run."""
    c = client()
    markdown = to_markdown(table)
    c.log_text(run_id, markdown, "comparison.md")
    c.log_table(run_id, data=_table_columns(to_csv_rows(table)), artifact_file="comparison_table.json")
    c.log_dict(run_id, table, "comparison.json")
    fig = plots.comparison_bars(table)
    c.log_figure(run_id, fig, "comparison.png")
    plots.close(fig)
    metrics = [Metric(metric_key(f"{row}/{col}"), cell["mean"], 0, 0)
               for row in table["rows"] for col, cell in table["cells"][row].items()]
    c.log_batch(run_id, metrics=metrics[:1000])
    c.set_tag(run_id, "attnflow.components", json.dumps(table["rows"])[:5000])


def _table_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = list(rows[0]) if rows else []
    return {k: [r.get(k) for r in rows] for k in keys}

